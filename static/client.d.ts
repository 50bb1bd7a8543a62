// Types for /client.js: a live list of Funkos that follows funko-live's change stream.

/** A Funko as `GET /funkos/{id}` answers it. */
export interface Funko {
  id: number;
  name: string;
  description: string | null;
  price: number;
  stock: number;
  /** The category's name, in its canonical spelling. */
  category: string;
  /** An absolute http(s) URL or a `/storage/...` path on the server. */
  image: string;
  isDeleted: boolean;
  /** 1, then +1 on every change; sent as the strong ETag `"<version>"`. */
  version: number;
  createdAt: string;
  updatedAt: string;
}

/** A Funko change event, the same JSON on SSE, long-polling and WebSocket. */
export interface ChangeEvent {
  /** The cursor: a decimal string that only grows, in commit order. */
  id: string;
  entity: "FUNKOS";
  type: "CREATE" | "UPDATE" | "DELETE";
  /** The Funko after the change (`isDeleted` on a DELETE). */
  data: Funko;
  createdAt: string;
  /** On a view's stream: how the change moves the Funko with respect to the view. */
  view?: "enter" | "update" | "leave";
}

/** A view: the Funkos `GET /funkos` answers for these filters. Unset ones do not filter. */
export interface Filters {
  /** A category's name, any case. */
  category?: string;
  /** A substring of the name or the description, any case. */
  q?: string;
  /** Inclusive. */
  minPrice?: number;
  /** Inclusive. */
  maxPrice?: number;
}

export type Transport = "sse" | "poll" | "ws";

export type Status = "connecting" | "live" | "reconnecting" | "stopped";

/** What onChange reports; every event the stream delivers is one upsert, remove or skip. */
export type Change =
  /** The whole list was read (at the start, and after a reset). */
  | { kind: "load" }
  /** The Funko is in the list now, added or changed. */
  | { kind: "upsert"; funko: Funko; event: ChangeEvent }
  /** The Funko left the list: deleted, or out of the view. */
  | { kind: "remove"; id: number; event: ChangeEvent }
  /** An event that changes nothing here: outside the view, or older than the list. */
  | { kind: "skip"; event: ChangeEvent }
  /** The cursor could not be served; a "load" follows, then changes from `cursor` on. */
  | { kind: "reset"; reason: "expired" | "unknown"; cursor: string }
  /** The stream is now followed on `transport` (at the start, and on a fallback). */
  | { kind: "transport"; transport: Transport }
  /** The connection's state; `error` says why when reconnecting after a failure. */
  | { kind: "status"; status: Status; error?: unknown };

/**
 * The parts of an EventSource the library uses: the browser's, or the `eventsource`
 * package's. (Handlers take `any` so that both constructors' own event types fit.)
 */
export interface EventSourceLike {
  readonly readyState: number;
  onopen: ((event: any) => void) | null;
  onmessage: ((message: any) => void) | null;
  onerror: ((event: any) => void) | null;
  addEventListener(type: "reset", listener: (message: any) => void): void;
  close(): void;
}

/** The parts of a WebSocket the library uses: the browser's, or the `ws` package's. */
export interface WebSocketLike {
  onmessage: ((message: any) => void) | null;
  onerror: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  close(): void;
}

export interface LiveOptions {
  /** The server's origin, such as "http://127.0.0.1:8080"; "" (the default): the page's own. */
  baseUrl?: string;
  /** Follow only this view. */
  filters?: Filters;
  /**
   * "auto" (the default): Server-Sent Events, falling back to long-polling when EventSource
   * fails 3 times without ever opening; otherwise that transport only.
   */
  transport?: "auto" | Transport;
  /** Called with the whole list, sorted by id, after each change. */
  onChange?: (funkos: Funko[], change: Change) => void;
  /** Defaults to globalThis.fetch. */
  fetch?: typeof fetch;
  /** Defaults to globalThis.EventSource (in Node: `import { EventSource } from "eventsource"`). */
  EventSource?: new (url: string) => EventSourceLike;
  /** Defaults to globalThis.WebSocket (in Node 20: `import WebSocket from "ws"`). */
  WebSocket?: new (url: string, protocol: string) => WebSocketLike;
}

export interface LiveFunkos {
  /** The list: id -> Funko. Read it, do not change it. */
  readonly funkos: ReadonlyMap<number, Funko>;
  /** The stream position of the last event or reset received; null until the first read. */
  readonly cursor: string | null;
  /** The transport in use; null until the first read. */
  readonly transport: Transport | null;
  readonly status: Status | null;
  /** Closes the stream; nothing is reported after the "stopped" status. */
  stop(): void;
}

/** Reads the list (every page), then follows its changes from that read's cursor. */
export function liveFunkos(options?: LiveOptions): LiveFunkos;

/** A problem (RFC 9457), the body of every error answer. */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail?: string;
  /** One entry per offending field. */
  errors?: { field: string; message: string }[];
}

export interface RequestOptions {
  /** Sent as JSON. */
  body?: unknown;
  /** Sent as `Authorization: Bearer <token>`. */
  token?: string | null;
  headers?: Record<string, string>;
  baseUrl?: string;
  fetch?: typeof fetch;
}

export interface Answer<T = any> {
  status: number;
  ok: boolean;
  headers: Headers;
  /** Parsed JSON (a Problem on an error), text, or null when empty. */
  body: T | Problem | string | null;
}

/**
 * One REST call, such as `request("PATCH", "/funkos/7", { body: { stock: 2 }, token })`.
 * Answers whatever the status (401 or 403: a token is needed); throws only on a network error.
 */
export function request<T = any>(method: string, path: string, options?: RequestOptions): Promise<Answer<T>>;

/** Whether a Funko belongs to a view, by the rules of `GET /funkos`. */
export function matches(funko: Funko, filters?: Filters): boolean;
