//! Pylon's HTTP/1.1 codec, made for proxying: request and response heads parsed by
//! `httparse`, with the framing rules of docs/security.md enforced as they are parsed
//! (`Content-Length` and `Transfer-Encoding`, `Host` and the target's form, bare line
//! ends), header names kept as they were written and in their order, and a strict
//! chunked-body decoder that lets canonical framing pass through untouched. No I/O: the
//! connection code owns sockets and buffers and calls in here.
//!
//! Written on httparse rather than taken from hyper: hyper keeps its head parser and
//! body decoder private, parses into a `HeaderMap` (losing the case and order of names),
//! and keeps one of `Content-Length` and `Transfer-Encoding` silently where a proxy must
//! refuse the message. httparse does the tokenizing; what is here is the HTTP/1.1
//! semantics a proxy needs on top of it (RFC 9112 §3, §6, §7, §9).

mod chunked;
mod encode;
mod head;
mod names;
mod rules;

pub use chunked::{ChunkError, ChunkStep, ChunkedDecoder, Handover};
pub use encode::{
    HeaderCase, Spelled, WriteFields, write_chunk_size, write_request_head, write_response_head,
};
pub use head::{
    BodyFraming, Fields, HeadError, HeadLimits, RequestHead, ResponseHead, TargetForm,
    parse_request, parse_response,
};
pub use rules::{content_length, valid_host};
