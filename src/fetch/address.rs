//! The SSRF address policy: which IPv4 and IPv6 addresses (embedded IPv4 forms included) a fetch may connect to.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused as a fetch target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockReason {
    /// 127/8, ::1.
    Loopback,
    /// RFC 1918: 10/8, 172.16/12, 192.168/16.
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// A cloud instance metadata endpoint (refused even when private networks are allowed).
    CloudMetadata,
    /// IPv6 unique-local fc00::/7 (or deprecated site-local fec0::/10).
    UniqueLocal,
    /// Carrier-grade NAT 100.64/10.
    SharedAddressSpace,
    /// Multicast (refused even when private networks are allowed).
    Multicast,
    /// 0.0.0.0/8, :: (refused even when private networks are allowed).
    Unspecified,
    /// 255.255.255.255 (refused even when private networks are allowed).
    Broadcast,
    /// Documentation ranges (TEST-NET-1/2/3, 2001:db8::/32, 3fff::/20).
    Documentation,
    /// Benchmarking 198.18/15.
    Benchmarking,
    /// Other special-purpose or reserved ranges (240/4, 192.0.0/24, 2001::/23, 100::/64 ...).
    Reserved,
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlockReason::Loopback => "loopback address",
            BlockReason::Private => "private network address",
            BlockReason::LinkLocal => "link-local address",
            BlockReason::CloudMetadata => "cloud metadata endpoint",
            BlockReason::UniqueLocal => "unique-local (private) IPv6 address",
            BlockReason::SharedAddressSpace => "carrier-grade NAT address",
            BlockReason::Multicast => "multicast address",
            BlockReason::Unspecified => "unspecified address",
            BlockReason::Broadcast => "broadcast address",
            BlockReason::Documentation => "documentation address",
            BlockReason::Benchmarking => "benchmarking address",
            BlockReason::Reserved => "reserved address",
        })
    }
}

impl BlockReason {
    /// Whether `allow_private_networks` lifts this block (local development and tests only).
    pub fn lifted_by_allow_private(self) -> bool {
        !matches!(self, BlockReason::CloudMetadata | BlockReason::Multicast | BlockReason::Unspecified | BlockReason::Broadcast)
    }
}

/// Classifies an address: `None` when it is an ordinary public address, else why it is not.
///
/// This is the SSRF policy's core; it ignores `allow_private_networks` (see [`address_allowed`]).
pub fn classify_ip(ip: IpAddr) -> Option<BlockReason> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// [`classify_ip`] for an IPv4 address.
fn classify_v4(ip: Ipv4Addr) -> Option<BlockReason> {
    let o = ip.octets();
    let n = u32::from(ip);
    let in_net = |base: [u8; 4], bits: u32| -> bool {
        let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
        (n & mask) == (u32::from(Ipv4Addr::from(base)) & mask)
    };
    if matches!(o, [169, 254, 169, 254] | [169, 254, 170, 2] | [100, 100, 100, 200]) {
        return Some(BlockReason::CloudMetadata);
    }
    if ip.is_broadcast() {
        return Some(BlockReason::Broadcast);
    }
    if in_net([0, 0, 0, 0], 8) {
        return Some(BlockReason::Unspecified);
    }
    if in_net([127, 0, 0, 0], 8) {
        return Some(BlockReason::Loopback);
    }
    if in_net([10, 0, 0, 0], 8) || in_net([172, 16, 0, 0], 12) || in_net([192, 168, 0, 0], 16) {
        return Some(BlockReason::Private);
    }
    if in_net([169, 254, 0, 0], 16) {
        return Some(BlockReason::LinkLocal);
    }
    if in_net([100, 64, 0, 0], 10) {
        return Some(BlockReason::SharedAddressSpace);
    }
    if in_net([224, 0, 0, 0], 4) {
        return Some(BlockReason::Multicast);
    }
    if in_net([192, 0, 2, 0], 24) || in_net([198, 51, 100, 0], 24) || in_net([203, 0, 113, 0], 24) {
        return Some(BlockReason::Documentation);
    }
    if in_net([198, 18, 0, 0], 15) {
        return Some(BlockReason::Benchmarking);
    }
    if in_net([240, 0, 0, 0], 4) || in_net([192, 0, 0, 0], 24) || in_net([192, 88, 99, 0], 24) {
        return Some(BlockReason::Reserved);
    }
    None
}

/// [`classify_ip`] for an IPv6 address; an embedded IPv4 address is judged as itself.
fn classify_v6(ip: Ipv6Addr) -> Option<BlockReason> {
    let s = ip.segments();
    if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
        return Some(BlockReason::CloudMetadata);
    }
    if ip.is_unspecified() {
        return Some(BlockReason::Unspecified);
    }
    if ip.is_loopback() {
        return Some(BlockReason::Loopback);
    }
    // Every form that carries an IPv4 address is judged by that address (the one a translator
    // or tunnel would end up connecting to), and never does better than `fallback`.
    if let Some((candidates, fallback)) = embedded_v4(ip) {
        let worst = candidates.iter().filter_map(|v4| classify_v4(*v4)).min_by_key(|r| severity(*r));
        return worst.or(fallback);
    }
    if s[0] & 0xff00 == 0xff00 {
        return Some(BlockReason::Multicast);
    }
    if s[0] & 0xfe00 == 0xfc00 {
        return Some(BlockReason::UniqueLocal);
    }
    if s[0] & 0xffc0 == 0xfe80 {
        return Some(BlockReason::LinkLocal);
    }
    if s[0] & 0xffc0 == 0xfec0 {
        return Some(BlockReason::UniqueLocal);
    }
    if (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] & 0xfff0) == 0x3ff0 {
        return Some(BlockReason::Documentation);
    }
    // 100::/64 discard, 2001::/23 IETF protocol assignments.
    if (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) || (s[0] == 0x2001 && s[1] < 0x0200) {
        return Some(BlockReason::Reserved);
    }
    // Only 2000::/3 is global unicast; everything else is unassigned or special.
    if s[0] & 0xe000 != 0x2000 {
        return Some(BlockReason::Reserved);
    }
    None
}

/// The IPv4 addresses an IPv6 address embeds, and the verdict when they are all public:
/// IPv4-mapped `::ffff:a.b.c.d` and IPv4-translated `::ffff:0:a.b.c.d` (public: fine), the
/// deprecated IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96` (fine) and the local-use
/// `64:ff9b:1::/48` (RFC 6052 places the address by prefix length, so both the /48 and the /96
/// positions are judged), 6to4 `2002:V4ADDR::/48` (fine) and Teredo `2001:0::/32` (server and,
/// de-obfuscated, client address). `None` for an address that embeds none.
fn embedded_v4(ip: Ipv6Addr) -> Option<(Vec<Ipv4Addr>, Option<BlockReason>)> {
    let s = ip.segments();
    let b = ip.octets();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    if s[0..5] == [0, 0, 0, 0, 0] && s[5] == 0xffff {
        return Some((vec![v4(s[6], s[7])], None));
    }
    if s[0..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0 {
        return Some((vec![v4(s[6], s[7])], None));
    }
    if s[0..6] == [0, 0, 0, 0, 0, 0] {
        return Some((vec![v4(s[6], s[7])], Some(BlockReason::Reserved)));
    }
    if s[0..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some((vec![v4(s[6], s[7])], None));
    }
    if s[0..3] == [0x64, 0xff9b, 1] {
        // /48: octets 6-7, then (after the u octet 8) 9-10. /96: the last four.
        // A position left all-zero is the other layout's padding, not an address.
        let at48 = Ipv4Addr::new(b[6], b[7], b[9], b[10]);
        let at96 = v4(s[6], s[7]);
        let mut both: Vec<Ipv4Addr> = [at48, at96].into_iter().filter(|a| !a.is_unspecified()).collect();
        if both.is_empty() {
            both.push(Ipv4Addr::UNSPECIFIED);
        }
        return Some((both, Some(BlockReason::Reserved)));
    }
    if s[0] == 0x2002 {
        return Some((vec![v4(s[1], s[2])], None));
    }
    if s[0] == 0x2001 && s[1] == 0 {
        return Some((vec![v4(s[2], s[3]), v4(!s[6], !s[7])], Some(BlockReason::Reserved)));
    }
    None
}

/// Which block wins when several embedded addresses are blocked: the metadata address first,
/// then what `allow_private_networks` cannot lift, then the rest.
fn severity(r: BlockReason) -> u8 {
    match r {
        BlockReason::CloudMetadata => 0,
        r if !r.lifted_by_allow_private() => 1,
        _ => 2,
    }
}

/// The policy decision for one address: `Ok` when it may be connected to.
pub fn address_allowed(ip: IpAddr, allow_private_networks: bool) -> Result<(), BlockReason> {
    match classify_ip(ip) {
        None => Ok(()),
        Some(r) if allow_private_networks && r.lifted_by_allow_private() => Ok(()),
        Some(r) => Err(r),
    }
}
