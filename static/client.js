// The browser client library: see client.d.ts.
export {};
