//! Request and response heads: tokenized by httparse, then held to the rules a proxy
//! needs before it forwards anything (docs/security.md, "HTTP/1.1 request framing"):
//! CRLF line ends only, one body framing, a target whose form fits its method, one valid
//! `Host` that agrees with an absolute-form target. A head keeps its bytes; its fields
//! are ranges into them, so names keep their case and order and nothing is copied.

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};

use crate::rules;

/// Fields parsed into a buffer on the stack; more than this many take one on the heap.
const STACK_FIELDS: usize = 256;

/// Why a head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// The head breaks HTTP/1.1 syntax or a framing rule; the text names which.
    Invalid(&'static str),
    /// An HTTP/1.1 request without `Host` and without an absolute-form target.
    MissingHost,
    /// More header fields than [`HeadLimits::max_fields`].
    TooManyFields,
    /// No complete head within [`HeadLimits::max_bytes`].
    TooLarge,
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::Invalid(rule) => write!(f, "invalid head: {rule}"),
            HeadError::MissingHost => f.write_str("missing Host"),
            HeadError::TooManyFields => f.write_str("too many header fields"),
            HeadError::TooLarge => f.write_str("head too large"),
        }
    }
}

impl std::error::Error for HeadError {}

/// How a message's body is framed (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// The bounds a head is parsed within.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Bytes of a head, its blank line included.
    pub max_bytes: usize,
    /// Header fields.
    pub max_fields: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_bytes: 64 * 1024,
            max_fields: 100,
        }
    }
}

/// The form of a request target (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`
    Origin,
    /// `http://authority/path` (forward proxies)
    Absolute,
    /// `host:port` (`CONNECT` only)
    Authority,
    /// `*` (`OPTIONS` only)
    Asterisk,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    name: Range<usize>,
    value: Range<usize>,
}

/// A head's header fields: names as written, in order, sharing the head's bytes.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    raw: Bytes,
    list: Vec<Field>,
    /// Every `Connection` option is `keep-alive` or `close` (read by the parse).
    persistence_only: bool,
}

impl Fields {
    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Every field as (name, value), in the order received.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.list
            .iter()
            .map(|f| (&self.raw[f.name.clone()], &self.raw[f.value.clone()]))
    }

    /// The names, as written, in order.
    pub fn names(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.list.iter().map(|f| &self.raw[f.name.clone()])
    }

    /// The `i`th field's name as written.
    pub(crate) fn name_at(&self, i: usize) -> &[u8] {
        &self.raw[self.list[i].name.clone()]
    }

    /// The values of the fields called `name` (any case), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The first value of the field called `name` (any case).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The fields as a `HeaderMap`; values share the head's bytes.
    pub fn to_header_map(&self) -> HeaderMap {
        self.header_map(false)
    }

    /// The fields as a proxy passes them on: as [`Fields::to_header_map`], less the
    /// fields that only spoke of this hop's persistence, which the head has read
    /// already ([`RequestHead::keep_alive`], [`ResponseHead::keep_alive`]) and a proxy
    /// strips (RFC 9110 §7.6.1): `Keep-Alive`, and `Connection` when its every option
    /// is `keep-alive` or `close`. `Connection` naming anything else stays, for the
    /// proxy to strip what it names. (Most heads carry `Connection: keep-alive`; left
    /// in, it costs a removal from the map on every message.)
    pub fn to_forwarded_header_map(&self) -> HeaderMap {
        self.header_map(true)
    }

    fn header_map(&self, forwarded: bool) -> HeaderMap {
        // Room for what a proxy adds (forwarding fields, `Via`, `Date`, framing), so
        // that adding them does not grow the map (a rehash of every field).
        let mut map = HeaderMap::with_capacity(self.list.len() + 6);
        let mut length_seen = false;
        for f in &self.list {
            // httparse let through only token names and field-value bytes.
            let name = &self.raw[f.name.clone()];
            let Ok(n) =
                crate::names::known_name(name).map_or_else(|| HeaderName::from_bytes(name), Ok)
            else {
                continue;
            };
            // Several `Content-Length` lines passed the framing rules only if they agree:
            // one is kept (RFC 9110 §8.6), so that one goes on, as hyper reads them too.
            if n == http::header::CONTENT_LENGTH && std::mem::replace(&mut length_seen, true) {
                continue;
            }
            if forwarded
                && ((n == http::header::CONNECTION && self.persistence_only)
                    || n.as_str() == "keep-alive")
            {
                continue;
            }
            let value = self.raw.slice(f.value.clone());
            // SAFETY: httparse admits in a field value only HTAB, SP, VCHAR and obs-text
            // (0x80-0xFF), all of them bytes a `HeaderValue` may hold (it refuses only
            // other controls and DEL); checking them a second time cost about 60
            // instructions per field. (Debug builds check anyway: the differential test
            // and the fuzz target would catch a disagreement.)
            #[allow(unsafe_code)]
            let v = unsafe { HeaderValue::from_maybe_shared_unchecked(value) };
            map.append(n, v);
        }
        map
    }
}

/// A request head that passed every rule.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    target: Range<usize>,
    pub version: Version,
    pub form: TargetForm,
    pub fields: Fields,
    pub framing: BodyFraming,
    /// The connection may carry another request after this one (RFC 9112 §9.3).
    pub keep_alive: bool,
    /// `Connection: upgrade` with an `Upgrade` field: the client asks to switch.
    pub upgrade: bool,
    /// `Expect: 100-continue` (HTTP/1.1 only).
    pub expect_continue: bool,
}

impl RequestHead {
    /// The target exactly as sent.
    pub fn target(&self) -> &[u8] {
        &self.raw()[self.target.clone()]
    }

    /// The head's bytes, its blank line included.
    pub fn raw(&self) -> &Bytes {
        &self.fields.raw
    }

    /// The `Host` field's value, if any.
    pub fn host(&self) -> Option<&[u8]> {
        self.fields.get("host")
    }
}

/// A response head that passed every rule.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    reason: Range<usize>,
    pub fields: Fields,
    pub framing: BodyFraming,
    /// The connection may carry another exchange after this one.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// The reason phrase as sent (may be empty).
    pub fn reason(&self) -> &[u8] {
        &self.raw()[self.reason.clone()]
    }

    /// The head's bytes, its blank line included.
    pub fn raw(&self) -> &Bytes {
        &self.fields.raw
    }
}

/// Parses the request head at the front of `buf`. `Ok(None)`: incomplete, read more.
/// A complete head is split off `buf`, which keeps what follows it (body bytes, or a
/// pipelined request).
pub fn parse_request(
    buf: &mut BytesMut,
    limits: &HeadLimits,
) -> Result<Option<RequestHead>, HeadError> {
    let mut stack = [MaybeUninit::<httparse::Header<'_>>::uninit(); STACK_FIELDS];
    let mut heap = Vec::new();
    let slots = field_slots(&mut stack, &mut heap, limits.max_fields);
    let mut req = httparse::Request::new(&mut []);
    let status = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        &buf[..],
        slots,
    );
    let Some(len) = head_len(status, buf.len(), limits)? else {
        return Ok(None);
    };
    let base = &buf[..len];
    crlf_only(base)?;
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Invalid("method"))?;
    let version = version(req.version)?;
    let target = span(base, req.path.unwrap_or_default().as_bytes());
    let list = field_spans(base, req.headers);
    let mut fields = split_head(buf, len, list);
    let uri = Uri::from_maybe_shared(fields.raw.slice(target.clone()))
        .map_err(|_| HeadError::Invalid("target"))?;
    let form = target_form(&method, &uri)?;
    check_host(&fields, version, form, &uri)?;
    let framing = rules::framing(&fields)?;
    if framing.chunked && version == Version::HTTP_10 {
        return Err(HeadError::Invalid("transfer-encoding in HTTP/1.0"));
    }
    let options = rules::connection(&fields);
    fields.persistence_only = !options.other;
    let expect_continue = version == Version::HTTP_11
        && fields
            .get("expect")
            .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"));
    Ok(Some(RequestHead {
        method,
        uri,
        target,
        version,
        form,
        framing: framing.body(BodyFraming::None),
        keep_alive: keeps_alive(version, options),
        upgrade: options.upgrade && fields.get("upgrade").is_some(),
        expect_continue,
        fields,
    }))
}

/// Parses the response head at the front of `buf`, the answer to a `method` request.
/// `Ok(None)`: incomplete. A complete head is split off `buf`.
pub fn parse_response(
    buf: &mut BytesMut,
    method: &Method,
    limits: &HeadLimits,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut stack = [MaybeUninit::<httparse::Header<'_>>::uninit(); STACK_FIELDS];
    let mut heap = Vec::new();
    let slots = field_slots(&mut stack, &mut heap, limits.max_fields);
    let mut resp = httparse::Response::new(&mut []);
    let status = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        &buf[..],
        slots,
    );
    let Some(len) = head_len(status, buf.len(), limits)? else {
        return Ok(None);
    };
    let base = &buf[..len];
    crlf_only(base)?;
    let version = version(resp.version)?;
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(HeadError::Invalid("status"))?;
    let reason = span(base, resp.reason.unwrap_or_default().as_bytes());
    let list = field_spans(base, resp.headers);
    let mut fields = split_head(buf, len, list);
    let framing = rules::framing(&fields)?;
    let bodyless = *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || (*method == Method::CONNECT && status.is_success());
    let framing = if bodyless {
        BodyFraming::None
    } else {
        framing.body(BodyFraming::UntilClose)
    };
    let options = rules::connection(&fields);
    fields.persistence_only = !options.other;
    Ok(Some(ResponseHead {
        status,
        version,
        reason,
        keep_alive: framing != BodyFraming::UntilClose && keeps_alive(version, options),
        framing,
        fields,
    }))
}

/// Room for `max` fields: on the stack (uninitialised, so free) up to [`STACK_FIELDS`],
/// which covers the proxy's default backstop of 200; a larger limit takes the heap.
fn field_slots<'s, 'b>(
    stack: &'s mut [MaybeUninit<httparse::Header<'b>>; STACK_FIELDS],
    heap: &'s mut Vec<MaybeUninit<httparse::Header<'b>>>,
    max: usize,
) -> &'s mut [MaybeUninit<httparse::Header<'b>>] {
    if max <= STACK_FIELDS {
        &mut stack[..max]
    } else {
        heap.resize(max, MaybeUninit::uninit());
        &mut heap[..]
    }
}

/// The head's `len` bytes split off `buf`, its fields over its bytes. (One handle on
/// the bytes: a second, cloned, cost two atomic read-modify-writes per head.)
fn split_head(buf: &mut BytesMut, len: usize, list: Vec<Field>) -> Fields {
    Fields {
        raw: buf.split_to(len).freeze(),
        list,
        persistence_only: false,
    }
}

/// The head's length once complete; its limits checked.
fn head_len(
    status: httparse::Result<usize>,
    buffered: usize,
    limits: &HeadLimits,
) -> Result<Option<usize>, HeadError> {
    match status {
        Ok(httparse::Status::Complete(n)) if n > limits.max_bytes => Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) if buffered >= limits.max_bytes => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyFields),
        Err(httparse::Error::HeaderName) => Err(HeadError::Invalid("field name")),
        Err(httparse::Error::HeaderValue) => Err(HeadError::Invalid("field value")),
        Err(httparse::Error::NewLine) => Err(HeadError::Invalid("line end")),
        Err(httparse::Error::Status) => Err(HeadError::Invalid("status")),
        Err(httparse::Error::Token) => Err(HeadError::Invalid("request line")),
        Err(httparse::Error::Version) => Err(HeadError::Invalid("version")),
    }
}

/// Every line ends in CRLF: a bare LF, which httparse accepts, is read as a line end
/// by some peers and not by others.
fn crlf_only(head: &[u8]) -> Result<(), HeadError> {
    if memchr::memchr_iter(b'\n', head).all(|i| i > 0 && head[i - 1] == b'\r') {
        Ok(())
    } else {
        Err(HeadError::Invalid("bare LF"))
    }
}

fn version(v: Option<u8>) -> Result<Version, HeadError> {
    match v {
        Some(0) => Ok(Version::HTTP_10),
        Some(1) => Ok(Version::HTTP_11),
        _ => Err(HeadError::Invalid("version")),
    }
}

/// Where `part` (a slice of `base`) lies in it.
fn span(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize)
        .saturating_sub(base.as_ptr() as usize)
        .min(base.len());
    start..(start + part.len()).min(base.len())
}

/// The fields' names and values as ranges of `base`, values without trailing space.
fn field_spans(base: &[u8], headers: &[httparse::Header<'_>]) -> Vec<Field> {
    headers
        .iter()
        .map(|h| Field {
            name: span(base, h.name.as_bytes()),
            value: span(base, h.value.trim_ascii_end()),
        })
        .collect()
}

/// The target's form, which must fit the method: authority-form for `CONNECT` only
/// (with a port), `*` for `OPTIONS` only, no user info in an absolute-form target.
fn target_form(method: &Method, uri: &Uri) -> Result<TargetForm, HeadError> {
    let form = if uri.scheme().is_some() {
        match uri.authority() {
            Some(a) if !a.as_str().contains('@') && !a.host().is_empty() => TargetForm::Absolute,
            _ => return Err(HeadError::Invalid("absolute target")),
        }
    } else if let Some(a) = uri.authority() {
        if a.port_u16().is_none() || a.as_str().contains('@') {
            return Err(HeadError::Invalid("authority target"));
        }
        TargetForm::Authority
    } else if uri.path() == "*" {
        TargetForm::Asterisk
    } else if uri.path().starts_with('/') {
        TargetForm::Origin
    } else {
        return Err(HeadError::Invalid("target"));
    };
    match (form, method) {
        (TargetForm::Authority, m) if *m != Method::CONNECT => {
            Err(HeadError::Invalid("authority target outside CONNECT"))
        }
        (f, &Method::CONNECT) if f != TargetForm::Authority => {
            Err(HeadError::Invalid("CONNECT without an authority target"))
        }
        (TargetForm::Asterisk, m) if *m != Method::OPTIONS => {
            Err(HeadError::Invalid("* outside OPTIONS"))
        }
        (f, _) => Ok(f),
    }
}

/// One `Host`, a plain authority; required in HTTP/1.1 unless the target is
/// absolute-form, and then equal to its authority.
fn check_host(
    fields: &Fields,
    version: Version,
    form: TargetForm,
    uri: &Uri,
) -> Result<(), HeadError> {
    let mut hosts = fields.get_all("host");
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HeadError::Invalid("two Host fields"));
    }
    match host {
        None if version == Version::HTTP_11 && form != TargetForm::Absolute => {
            Err(HeadError::MissingHost)
        }
        None => Ok(()),
        Some(h) if !rules::valid_host(h) => Err(HeadError::Invalid("Host")),
        Some(h) => match (form, uri.authority()) {
            (TargetForm::Absolute, Some(a)) if !h.eq_ignore_ascii_case(a.as_str().as_bytes()) => {
                Err(HeadError::Invalid("Host differs from the target"))
            }
            _ => Ok(()),
        },
    }
}

fn keeps_alive(version: Version, o: rules::ConnectionOptions) -> bool {
    if o.close {
        return false;
    }
    version == Version::HTTP_11 || o.keep_alive
}
