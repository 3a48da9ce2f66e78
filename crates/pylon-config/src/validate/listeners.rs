//! `[[listeners]]` entries: addresses, protocol, limits, forwarding headers, TLS and its
//! certificates; their Layer 4, PROXY protocol, forward-proxy and HTTP/3 parts are in
//! the modules named for them.

use super::*;

/// Where a listener entry is written, and which of its keys were left out because of
/// errors already reported.
pub(super) struct ListenerAt<'a> {
    pub(super) span: Range<usize>,
    pub(super) dropped: &'a Dropped,
}

pub(super) fn listener(
    r: RawListener,
    at: &ListenerAt<'_>,
    ctx: &Ctx<'_, '_>,
    names: &mut HashSet<String>,
    bound: &mut HashMap<(SocketAddr, bool), String>,
    cluster_refs: &mut Vec<(Range<usize>, String)>,
    p: &mut Problems,
) -> Option<Listener> {
    let dropped = at.dropped;
    // Problems of the listener as a whole are reported at its name.
    let name_span = r.name.as_ref().map_or(at.span.clone(), Spanned::span);
    let ok = match &r.name {
        Some(n) => check_name(n, "listener", names, p),
        None => {
            if !dropped.has("name") {
                p.span(
                    at.span.clone(),
                    "missing field `name`: every listener needs a name",
                );
            }
            false
        }
    };
    let name = r
        .name
        .as_ref()
        .map(|n| n.get_ref().clone())
        .unwrap_or_default();
    let mut binds = Vec::new();
    match &r.bind {
        Some(b) if b.get_ref().0.is_empty() => {
            p.at(b, "no bind address: give at least one IP:port");
        }
        None if !dropped.has("bind") => p.span(
            at.span.clone(),
            "missing field `bind`: give at least one IP:port, such as bind = \"0.0.0.0:8080\"",
        ),
        _ => {}
    }
    // Whether each address's socket is UDP: a `udp` listener, or STUN and TURN on UDP
    // alone (with TCP or TLS too, their UDP socket is beside the TCP one).
    let proto = r.protocol.as_ref().map(|s| s.get_ref().as_str());
    let udp = proto == Some("udp")
        || (matches!(proto, Some("stun" | "turn"))
            && r.transports
                .as_ref()
                .is_some_and(|t| t.get_ref().0.iter().all(|t| t == "udp")));
    if let Some(bind) = &r.bind {
        for b in &bind.get_ref().0 {
            match listen_addrs(b) {
                Ok(addrs) => {
                    for a in addrs {
                        // TCP and UDP ports are separate spaces.
                        if a.port() != 0
                            && let Some(other) = bound.insert((a, udp), name.clone())
                        {
                            p.at(
                                bind,
                                format!("address {a} is already bound by listener \"{other}\""),
                            );
                        }
                        binds.push(a);
                    }
                }
                Err(e) => p.at(bind, e),
            }
        }
    }
    let protocol = match r.protocol.as_ref().map(|s| s.get_ref().as_str()) {
        // `protocol` was written but not as text (already reported): judge the other keys
        // by the protocol they suggest, so they are not reported as misplaced.
        None if dropped.has("protocol") => {
            if r.cluster.is_some() || r.sni_routes.is_some() || dropped.has("sni_routes") {
                ListenerProtocol::Tcp
            } else if r.tls.is_some() || dropped.has("tls") {
                ListenerProtocol::Https
            } else {
                ListenerProtocol::Http
            }
        }
        None | Some("http") => ListenerProtocol::Http,
        Some("https") => ListenerProtocol::Https,
        Some("tcp") => ListenerProtocol::Tcp,
        Some("udp") => ListenerProtocol::Udp,
        Some("stun") => ListenerProtocol::Stun,
        Some("turn") => ListenerProtocol::Turn,
        Some(other) => {
            let s = r.protocol.as_ref().map(|s| s.span()).unwrap_or_default();
            p.span(
                s,
                format!(
                    "unknown listener protocol \"{other}\", expected one of: http, https, tcp, udp, stun, turn"
                ),
            );
            ListenerProtocol::Http
        }
    };
    let l4 = l4::l4_listener(&r, protocol, &name_span, dropped, cluster_refs, p);
    let proxy_protocol = l4::proxy_protocol_in(&r.proxy_protocol, protocol, p);
    let forward = l4::forward(&r.forward, protocol, &declared_names(ctx.root, "caches"), p);
    let stun = super::turn::stun_listener(&r, protocol, &binds, ctx, p);
    let tls = match (protocol, r.tls) {
        (ListenerProtocol::Https, Some(t)) => listener_tls(t, true, dropped, ctx, p),
        (ListenerProtocol::Tcp, Some(t))
            if l4.as_ref().is_some_and(|l| l.sni_routes.is_empty()) =>
        {
            listener_tls(t, false, dropped, ctx, p)
        }
        (ListenerProtocol::Tcp | ListenerProtocol::Udp, Some(_)) => None,
        (ListenerProtocol::Stun | ListenerProtocol::Turn, Some(t)) => {
            listener_tls(t, false, dropped, ctx, p)
        }
        (ListenerProtocol::Https, None) => {
            if !dropped.has("tls") {
                // Reported where https was asked for.
                p.span(
                    r.protocol.as_ref().map_or(name_span.clone(), Spanned::span),
                    "protocol \"https\" needs a [listeners.tls] table with at least one certificate",
                );
            }
            None
        }
        (_, Some(t)) => {
            p.at(
                &t,
                "`tls` applies only to listeners with protocol = \"https\" or \"tcp\"",
            );
            None
        }
        (_, None) => None,
    };
    let d = Limits::default();
    let max_headers = match &r.max_headers {
        Some(n) if *n.get_ref() == 0 => {
            p.at(n, "max_headers must be at least 1");
            d.max_headers
        }
        Some(n) => *n.get_ref(),
        None => d.max_headers,
    };
    let max_concurrent_streams = match &r.max_concurrent_streams {
        Some(n) if *n.get_ref() == 0 => {
            p.at(n, "max_concurrent_streams must be at least 1");
            d.max_concurrent_streams
        }
        Some(n) => *n.get_ref(),
        None => d.max_concurrent_streams,
    };
    let limits = Limits {
        header_read_timeout: duration(&r.header_read_timeout, d.header_read_timeout, p),
        send_timeout: duration(&r.send_timeout, d.send_timeout, p),
        idle_timeout: duration(&r.idle_timeout, d.idle_timeout, p),
        max_header_bytes: usize_size(&r.max_header_bytes, d.max_header_bytes, p),
        max_headers,
        max_uri_bytes: usize_size(&r.max_uri_bytes, d.max_uri_bytes, p),
        max_request_body: size(&r.max_request_body, d.max_request_body, p),
        max_concurrent_streams,
        h2_max_reset_streams: at_least_one(&r.h2_max_reset_streams, d.h2_max_reset_streams, p),
        h2_max_error_resets: at_least_one(&r.h2_max_error_resets, d.h2_max_error_resets, p),
    };
    let dh = ForwardingHeaders::default();
    let request_id = match r.request_id.as_ref() {
        None => dh.request_id.clone(),
        Some(v) => match v.get_ref() {
            StrOrBool::Bool(false) => None,
            StrOrBool::Bool(true) => dh.request_id.clone(),
            StrOrBool::Str(s) if header_name_ok(s) => Some(s.to_ascii_lowercase()),
            StrOrBool::Str(s) => {
                p.at(v, format!("invalid header name \"{s}\""));
                None
            }
        },
    };
    let headers = ForwardingHeaders {
        x_forwarded: r.x_forwarded.unwrap_or(dh.x_forwarded),
        forwarded: r.forwarded.unwrap_or(dh.forwarded),
        via: r.via.unwrap_or(dh.via),
        request_id,
    };
    let max_connections_per_ip = match &r.max_connections_per_ip {
        Some(n) if *n.get_ref() == 0 => {
            p.at(n, "max_connections_per_ip must be at least 1");
            None
        }
        Some(n) if protocol == ListenerProtocol::Udp => {
            p.at(
                n,
                "`max_connections_per_ip` applies to http, https and tcp listeners",
            );
            None
        }
        n => n.as_ref().map(|n| *n.get_ref()),
    };
    let tcp = tcp::tcp_options(&r.tcp_keepalive, &r.tcp_user_timeout, p);
    let defer_accept = match &r.defer_accept {
        Some(d)
            if !matches!(
                protocol,
                ListenerProtocol::Http | ListenerProtocol::Https | ListenerProtocol::Tcp
            ) =>
        {
            p.at(d, "`defer_accept` applies to http, https and tcp listeners");
            false
        }
        Some(d) => *d.get_ref(),
        None => matches!(protocol, ListenerProtocol::Http | ListenerProtocol::Https),
    };
    let http3 = http3::http3(&r.http3, protocol, p);
    if http3.as_ref().is_some_and(|h| h.early_data)
        && tls
            .as_ref()
            .is_some_and(|t| t.client_auth != ClientAuth::None)
    {
        // 0-RTT requests would be served before the client's certificate is checked.
        p.span(
            r.http3.as_ref().map_or(name_span.clone(), Spanned::span),
            "http3 early_data cannot be used with tls client_auth: early requests come before the client certificate is verified",
        );
    }
    if http3.is_some() {
        // The listener's addresses are taken on UDP too.
        for &a in binds.iter().filter(|a| a.port() != 0) {
            if let Some(other) = bound.insert((a, true), name.clone()) {
                p.span(
                    r.http3.as_ref().map_or(name_span.clone(), Spanned::span),
                    format!(
                        "address {a} (UDP, for HTTP/3) is already bound by listener \"{other}\""
                    ),
                );
            }
        }
    }
    if stun
        .as_ref()
        .is_some_and(|s| s.uses_tcp() && s.serves(TurnTransport::Udp))
    {
        // STUN and TURN over UDP beside TCP or TLS, on the same ports.
        for &a in binds.iter().filter(|a| a.port() != 0) {
            if let Some(other) = bound.insert((a, true), name.clone()) {
                p.span(
                    name_span.clone(),
                    format!("address {a} (UDP) is already bound by listener \"{other}\""),
                );
            }
        }
    }
    if protocol == ListenerProtocol::Udp || (stun.is_some() && udp) {
        for span in [
            r.tcp_keepalive.as_ref().map(Spanned::span),
            r.tcp_user_timeout.as_ref().map(Spanned::span),
        ]
        .into_iter()
        .flatten()
        {
            p.span(
                span,
                "`tcp_keepalive` and `tcp_user_timeout` apply to http, https and tcp listeners",
            );
        }
    }
    let mut rate_limit = Vec::new();
    if let Some(l) = &r.rate_limit {
        let declared = declared_names(ctx.root, "rate_limits");
        if !matches!(protocol, ListenerProtocol::Http | ListenerProtocol::Https)
            || forward.is_some()
        {
            p.at(
                l,
                "`rate_limit` on a listener applies to the routes of an http or https listener",
            );
        }
        for name in &l.get_ref().0 {
            if !declared.contains(name) {
                p.at(
                    l,
                    format!(
                        "unknown rate limit \"{name}\": define it in a [[rate_limits]] section"
                    ),
                );
            }
        }
        rate_limit = l.get_ref().0.clone();
    }
    ok.then_some(Listener {
        rate_limit,
        name,
        binds,
        bind_as_written: r
            .bind
            .as_ref()
            .map(|b| b.get_ref().0.clone())
            .unwrap_or_default(),
        protocol,
        limits,
        max_connections_per_ip,
        tcp: if protocol == ListenerProtocol::Udp || (stun.is_some() && udp) {
            TcpOptions::default()
        } else {
            tcp
        },
        defer_accept,
        headers,
        tls,
        http3,
        l4,
        proxy_protocol,
        forward,
        stun,
    })
}

fn certificate(
    r: &Spanned<RawCertificate>,
    ctx: &Ctx<'_, '_>,
    p: &mut Problems,
) -> CertificateFiles {
    let raw = r.get_ref();
    let mut server_names = Vec::new();
    if let Some(names) = &raw.server_names {
        for n in &names.get_ref().0 {
            match host_match(n) {
                Ok(HostMatch::Exact(h)) => server_names.push(h),
                Ok(HostMatch::Suffix(s)) => server_names.push(format!("*{s}")),
                Ok(HostMatch::Any) | Err(_) => p.at(
                    names,
                    format!("invalid server name \"{n}\": expected example.com or *.example.com"),
                ),
            }
        }
    }
    CertificateFiles {
        cert: ctx.file_ref(&raw.cert),
        key: ctx.file_ref(&raw.key),
        server_names,
    }
}

/// A listener's `tls` table; `dropped` is the listener's (paths start with `tls.`).
/// `https` listeners may take their certificate from ACME.
fn listener_tls(
    t: Spanned<RawListenerTls>,
    https: bool,
    dropped: &Dropped,
    ctx: &Ctx<'_, '_>,
    p: &mut Problems,
) -> Option<ListenerTls> {
    let span = t.span();
    let t = t.into_inner();
    let acme_named = t.acme.is_some();
    let acme = match t.acme {
        Some(a) if !https => {
            p.at(&a, "acme certificates are for https listeners");
            None
        }
        Some(a) => super::acme::acme(a, ctx, p),
        None => None,
    };
    let files = t.certificates.as_ref().map_or(&[][..], |c| c.get_ref());
    if files.is_empty()
        && !acme_named
        && !dropped.has("tls.certificates")
        && !dropped.has("tls.acme")
    {
        match &t.certificates {
            Some(c) => p.at(c, "at least one certificate is needed"),
            None => p.span(
                span.clone(),
                "tls needs `certificates` (files) or `acme` (ordered automatically)",
            ),
        }
    }
    let certificates = files.iter().map(|c| certificate(c, ctx, p)).collect();
    let min_version = match t.min_version.as_ref().map(|v| v.get_ref().as_str()) {
        None | Some("1.2") => TlsVersion::Tls12,
        Some("1.3") => TlsVersion::Tls13,
        Some(other) => {
            if let Some(v) = &t.min_version {
                p.at(
                    v,
                    format!("unknown TLS version \"{other}\", expected \"1.2\" or \"1.3\""),
                );
            }
            TlsVersion::Tls12
        }
    };
    let alpn = match &t.alpn {
        None => vec!["h2".to_owned(), "http/1.1".to_owned()],
        Some(list) => {
            for a in &list.get_ref().0 {
                if !matches!(a.as_str(), "h2" | "http/1.1") {
                    p.at(
                        list,
                        format!("unsupported ALPN protocol \"{a}\", expected h2 or http/1.1"),
                    );
                }
            }
            list.get_ref().0.clone()
        }
    };
    let client_auth = match t.client_auth.as_ref().map(|v| v.get_ref().as_str()) {
        None | Some("none") => ClientAuth::None,
        Some("optional") => ClientAuth::Optional,
        Some("required") => ClientAuth::Required,
        Some(other) => {
            if let Some(v) = &t.client_auth {
                p.at(
                    v,
                    format!("unknown client_auth \"{other}\", expected none, optional or required"),
                );
            }
            ClientAuth::None
        }
    };
    let client_ca = t.client_ca.as_ref().map(|c| ctx.file_ref(c));
    if client_auth != ClientAuth::None && client_ca.is_none() && !dropped.has("tls.client_ca") {
        p.span(
            span.clone(),
            "client_auth needs `client_ca`, the CA bundle client certificates must chain to",
        );
    }
    if client_auth == ClientAuth::None
        && !dropped.has("tls.client_auth")
        && let Some(c) = &t.client_ca
    {
        p.at(c, "`client_ca` is set but client_auth is \"none\"");
    }
    let unknown_sni = match t.unknown_sni.as_ref().map(|v| v.get_ref().as_str()) {
        None | Some("default") => UnknownSni::Default,
        Some("reject") => UnknownSni::Reject,
        Some(other) => {
            if let Some(v) = &t.unknown_sni {
                p.at(
                    v,
                    format!("unknown unknown_sni policy \"{other}\", expected default or reject"),
                );
            }
            UnknownSni::Default
        }
    };
    Some(ListenerTls {
        unknown_sni,
        ocsp_stapling: t.ocsp_stapling.unwrap_or(true),
        ocsp_cache: t.ocsp_cache.as_ref().map(|c| ctx.file_ref(c)),
        certificates,
        acme,
        min_version,
        alpn,
        handshake_timeout: duration(&t.handshake_timeout, Duration::from_secs(10), p),
        client_auth,
        client_ca,
        forward_client_cert: t
            .forward_client_cert
            .unwrap_or(client_auth != ClientAuth::None),
    })
}
