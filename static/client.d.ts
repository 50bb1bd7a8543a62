// Types for /client.js.
export {};
