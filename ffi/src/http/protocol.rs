//! The bridge protocol between the engine and JS (docs/http.md): the tags
//! of the records on the two rings, their flags, the per-request body window
//! and the reasons a request is aborted. Part of the ABI on every platform
//! (the TypeScript side reads them from the generated symbol table).

/// Kernel → JS record: a request (`[id][flags]` + head text).
pub const HTTP_TO_JS_REQUEST: u32 = 1;
/// Kernel → JS record: request body bytes (`[id][flags]` + bytes).
pub const HTTP_TO_JS_BODY: u32 = 2;
/// Kernel → JS record: response body bytes written (`[id][bytes]`).
pub const HTTP_TO_JS_CREDIT: u32 = 3;
/// Kernel → JS record: the request is over (`[id][reason]`).
pub const HTTP_TO_JS_ABORT: u32 = 4;
/// JS → kernel record: the response head (`[id][status][flags][lines length]`
/// + header lines, + the whole body with `HTTP_FLAG_INLINE_BODY`).
pub const HTTP_TO_KERNEL_RESPONSE: u32 = 1;
/// JS → kernel record: response body bytes (`[id][flags]` + bytes).
pub const HTTP_TO_KERNEL_BODY: u32 = 2;
/// JS → kernel record: request body bytes consumed (`[id][bytes]`).
pub const HTTP_TO_KERNEL_CREDIT: u32 = 3;
/// JS → kernel record: abort the response (`[id][0]`).
pub const HTTP_TO_KERNEL_ABORT: u32 = 4;
/// Flag of BODY, RESPONSE_BODY and RESPONSE records: nothing follows.
pub const HTTP_FLAG_END: u32 = 1;
/// Flag of RESPONSE records: the whole body follows the header lines (the
/// response is complete; set together with `HTTP_FLAG_END`).
pub const HTTP_FLAG_INLINE_BODY: u32 = 2;
/// Flag of REQUEST records: BODY records follow.
pub const HTTP_FLAG_HAS_BODY: u32 = 1;
/// Flag of REQUEST records: the request came over HTTP/2.
pub const HTTP_FLAG_HTTP2: u32 = 2;
/// Flag of REQUEST records: every byte of the text is ASCII (JS may decode
/// it as UTF-8, which is faster than reading it byte by byte).
pub const HTTP_FLAG_ASCII: u32 = 4;
/// Body bytes either side may send ahead of the other side's credit, per request.
pub const HTTP_BODY_WINDOW: u32 = 65536;
/// ABORT reason: the client went away.
pub const HTTP_ABORT_CLIENT_GONE: u32 = 1;
/// ABORT reason: the client was too slow (bodyTimeoutMs).
pub const HTTP_ABORT_TIMEOUT: u32 = 2;
/// ABORT reason: the request body exceeded maxBodyBytes (the kernel answered 413).
pub const HTTP_ABORT_TOO_LARGE: u32 = 3;
/// ABORT reason: the server is stopping.
pub const HTTP_ABORT_STOPPING: u32 = 4;
/// Default capacity of each bridge ring.
pub const HTTP_RING_BYTES: u32 = 4194304;
