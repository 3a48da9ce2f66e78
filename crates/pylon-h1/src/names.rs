//! The field names most messages carry, recognised in their usual spellings (Title-Case,
//! as HTTP/1.1 clients and servers send them, and lower case, as load tools and HTTP/2
//! gateways do) by one match, as the `HeaderName` they stand for. `HeaderName::from_bytes`
//! lower-cases each name into a scratch buffer before its own lookup; for these names
//! that pass is skipped. Any other name or spelling goes through `from_bytes` as before.

use http::HeaderName;
use http::header;

/// `name` as a `HeaderName`, when it is one of the common names in a usual spelling.
pub(crate) fn known_name(name: &[u8]) -> Option<HeaderName> {
    Some(match name {
        b"Host" | b"host" => header::HOST,
        b"Date" | b"date" => header::DATE,
        b"Server" | b"server" => header::SERVER,
        b"Content-Type" | b"content-type" => header::CONTENT_TYPE,
        b"Content-Length" | b"content-length" => header::CONTENT_LENGTH,
        b"Connection" | b"connection" => header::CONNECTION,
        b"User-Agent" | b"user-agent" => header::USER_AGENT,
        b"Accept" | b"accept" => header::ACCEPT,
        b"Accept-Encoding" | b"accept-encoding" => header::ACCEPT_ENCODING,
        b"Accept-Language" | b"accept-language" => header::ACCEPT_LANGUAGE,
        b"Accept-Ranges" | b"accept-ranges" => header::ACCEPT_RANGES,
        b"Cache-Control" | b"cache-control" => header::CACHE_CONTROL,
        b"Transfer-Encoding" | b"transfer-encoding" => header::TRANSFER_ENCODING,
        b"Last-Modified" | b"last-modified" => header::LAST_MODIFIED,
        b"ETag" | b"etag" => header::ETAG,
        b"Vary" | b"vary" => header::VARY,
        b"Location" | b"location" => header::LOCATION,
        b"Set-Cookie" | b"set-cookie" => header::SET_COOKIE,
        b"Cookie" | b"cookie" => header::COOKIE,
        b"Authorization" | b"authorization" => header::AUTHORIZATION,
        b"Referer" | b"referer" => header::REFERER,
        b"Origin" | b"origin" => header::ORIGIN,
        b"Content-Encoding" | b"content-encoding" => header::CONTENT_ENCODING,
        b"Expires" | b"expires" => header::EXPIRES,
        b"If-None-Match" | b"if-none-match" => header::IF_NONE_MATCH,
        b"If-Modified-Since" | b"if-modified-since" => header::IF_MODIFIED_SINCE,
        b"Via" | b"via" => header::VIA,
        b"Upgrade" | b"upgrade" => header::UPGRADE,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each name, lower case; the test also tries its usual (Title-Case) spelling.
    const NAMES: &[&str] = &[
        "host",
        "date",
        "server",
        "content-type",
        "content-length",
        "connection",
        "user-agent",
        "accept",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "cache-control",
        "transfer-encoding",
        "last-modified",
        "etag",
        "vary",
        "location",
        "set-cookie",
        "cookie",
        "authorization",
        "referer",
        "origin",
        "content-encoding",
        "expires",
        "if-none-match",
        "if-modified-since",
        "via",
        "upgrade",
    ];

    /// `name` as HTTP/1.1 messages usually spell it (the writer's rule, `ETag` included).
    fn usual(name: &str) -> String {
        let mut out = bytes::BytesMut::new();
        crate::encode::canonical(&mut out, name);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn known_names_are_what_from_bytes_reads() {
        for name in NAMES {
            for spelling in [name.to_string(), usual(name)] {
                assert_eq!(
                    known_name(spelling.as_bytes()),
                    Some(HeaderName::from_bytes(spelling.as_bytes()).unwrap()),
                    "{spelling}"
                );
            }
        }
    }

    #[test]
    fn other_names_and_spellings_are_left_to_from_bytes() {
        for other in [
            "x-custom",
            "HOST",
            "content_type",
            "Content-type",
            "Hos",
            "",
        ] {
            assert_eq!(known_name(other.as_bytes()), None, "{other}");
        }
    }
}
