//! Unit tests of the address policy, header filter, charset decoding and error kinds.

use super::body::decode_body;
use super::*;
use crate::error::JobError;

fn v4(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn classifies_ranges() {
    for (ip, r) in [
        ("10.0.0.1", BlockReason::Private),
        ("172.16.5.4", BlockReason::Private),
        ("172.31.255.255", BlockReason::Private),
        ("192.168.1.1", BlockReason::Private),
        ("127.0.0.1", BlockReason::Loopback),
        ("127.255.0.9", BlockReason::Loopback),
        ("169.254.169.254", BlockReason::CloudMetadata),
        ("169.254.1.1", BlockReason::LinkLocal),
        ("100.64.0.1", BlockReason::SharedAddressSpace),
        ("100.127.255.254", BlockReason::SharedAddressSpace),
        ("0.0.0.0", BlockReason::Unspecified),
        ("255.255.255.255", BlockReason::Broadcast),
        ("224.0.0.1", BlockReason::Multicast),
        ("192.0.2.10", BlockReason::Documentation),
        ("198.18.0.1", BlockReason::Benchmarking),
        ("240.0.0.1", BlockReason::Reserved),
        ("::1", BlockReason::Loopback),
        ("::", BlockReason::Unspecified),
        ("fe80::1", BlockReason::LinkLocal),
        ("fd00::1", BlockReason::UniqueLocal),
        ("fc00::1", BlockReason::UniqueLocal),
        ("fd00:ec2::254", BlockReason::CloudMetadata),
        ("ff02::1", BlockReason::Multicast),
        ("2001:db8::1", BlockReason::Documentation),
        ("::ffff:127.0.0.1", BlockReason::Loopback),
        ("::ffff:10.1.2.3", BlockReason::Private),
        ("::ffff:169.254.169.254", BlockReason::CloudMetadata),
        ("64:ff9b::a9fe:a9fe", BlockReason::CloudMetadata),
        ("2002:7f00:1::", BlockReason::Loopback),
    ] {
        assert_eq!(classify_ip(v4(ip)), Some(r), "{ip}");
    }
    for ip in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
        assert_eq!(classify_ip(v4(ip)), None, "{ip}");
    }
}

#[test]
fn every_ipv6_form_that_embeds_an_ipv4_address_is_judged_by_that_address() {
    use BlockReason::*;
    for (ip, r) in [
        // IPv4-translated (RFC 2765), the form a red team used for the metadata address.
        ("::ffff:0:169.254.169.254", CloudMetadata),
        ("::ffff:0:127.0.0.1", Loopback),
        ("::ffff:0:10.0.0.1", Private),
        // IPv4-compatible (deprecated): never better than reserved.
        ("::169.254.169.254", CloudMetadata),
        ("::8.8.8.8", Reserved),
        // NAT64 well-known and local-use prefixes (both RFC 6052 positions for /48).
        ("64:ff9b::127.0.0.1", Loopback),
        ("64:ff9b:1::a9fe:a9fe", CloudMetadata),
        ("64:ff9b:1:a9fe:a9:fe00::", CloudMetadata),
        ("64:ff9b:1::8.8.8.8", Reserved),
        // 6to4.
        ("2002:a9fe:a9fe::1", CloudMetadata),
        ("2002:c0a8:0101::1", Private),
        // Teredo: server address, and the client address (stored inverted).
        ("2001:0:a9fe:a9fe::1", CloudMetadata),
        ("2001:0:0808:0808::5601:5601", CloudMetadata),
        ("2001:0:0808:0808::f7f7:f7f7", Reserved),
        // Not in 2000::/3: not global unicast.
        ("4000::1", Reserved),
        ("1234::5", Reserved),
    ] {
        assert_eq!(classify_ip(v4(ip)), Some(r), "{ip}");
    }
    // Allowing private networks never lifts the metadata address in any of its forms.
    for ip in ["::ffff:0:169.254.169.254", "64:ff9b:1::a9fe:a9fe", "2001:0:0808:0808::5601:5601", "2002:a9fe:a9fe::"] {
        assert_eq!(address_allowed(v4(ip), true), Err(CloudMetadata), "{ip}");
    }
    for ip in ["::ffff:0:8.8.8.8", "64:ff9b::8.8.8.8", "2002:0808:0808::1", "2a00:1450:4001:81c::200e"] {
        assert_eq!(classify_ip(v4(ip)), None, "{ip}");
    }
}

#[test]
fn allow_private_never_lifts_metadata() {
    assert!(address_allowed(v4("127.0.0.1"), true).is_ok());
    assert!(address_allowed(v4("10.0.0.1"), true).is_ok());
    assert_eq!(address_allowed(v4("169.254.169.254"), true), Err(BlockReason::CloudMetadata));
    assert_eq!(address_allowed(v4("fd00:ec2::254"), true), Err(BlockReason::CloudMetadata));
    assert_eq!(address_allowed(v4("127.0.0.1"), false), Err(BlockReason::Loopback));
}

#[test]
fn filters_headers() {
    let h = filter_headers(
        [
            ("Host", "evil"),
            ("Connection", "close"),
            ("Keep-Alive", "1"),
            ("Proxy-Authorization", "x"),
            ("TE", "trailers"),
            ("Trailer", "x"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "h2c"),
            ("Cookie", "a=b"),
            ("Accept-Language", "fr"),
            ("X-Bad", "line\nbreak"),
        ],
        false,
    );
    assert_eq!(h.len(), 1);
    assert_eq!(h.get("accept-language").and_then(|v| v.to_str().ok()), Some("fr"));
    let h = filter_headers([("Cookie", "a=b")], true);
    assert_eq!(h.get("cookie").and_then(|v| v.to_str().ok()), Some("a=b"));
}

#[test]
fn decodes_charsets() {
    assert_eq!(decode_body(b"caf\xe9", Some("iso-8859-1"), "text/html"), "café");
    assert_eq!(decode_body("café".as_bytes(), None, "text/html"), "café");
    let html = b"<html><head><meta charset=\"windows-1252\"></head><body>\x93hi\x94</body></html>";
    assert!(decode_body(html, None, "text/html").contains("\u{201c}hi\u{201d}"));
}

#[test]
fn error_kinds_and_dispositions() {
    let e: JobError = FetchError::Blocked { host: "x".into(), addr: v4("10.0.0.1"), reason: BlockReason::Private }.into();
    assert_eq!((e.kind(), e.disposition()), ("ssrf_blocked", crate::error::Disposition::DeadLetter));
    let e: JobError = FetchError::Status(503).into();
    assert_eq!((e.kind(), e.disposition()), ("http_5xx", crate::error::Disposition::Retry));
    let e: JobError = FetchError::Status(404).into();
    assert_eq!((e.kind(), e.disposition()), ("http_4xx", crate::error::Disposition::DeadLetter));
    let e: JobError = FetchError::Timeout { secs: 3 }.into();
    assert_eq!((e.kind(), e.disposition()), ("fetch_timeout", crate::error::Disposition::Retry));
    let e: JobError = FetchError::RateLimited { retry_after_secs: Some(7) }.into();
    assert!(matches!(e, JobError::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(7)));
    let e: JobError =
        FetchError::RedirectBlocked { location: "file:///etc/passwd".into(), reason: Box::new(FetchError::Scheme("file".into())) }.into();
    assert_eq!(e.kind(), "ssrf_blocked");
}
