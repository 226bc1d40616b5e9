//! Subject alternative names read from a DER certificate: Istio identifies workloads by the
//! URI SAN (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`), and neither rustls nor webpki expose
//! a certificate's URIs. Only the path to the SAN extension is walked (Certificate →
//! TBSCertificate → extensions → 2.5.29.17), so this is a reader of a few DER shapes, not an
//! X.509 parser: a certificate is always verified by webpki before its names are read.

use std::net::IpAddr;

/// The names a certificate's SAN extension holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sans {
    /// `dNSName`.
    pub dns: Vec<String>,
    /// `uniformResourceIdentifier`.
    pub uri: Vec<String>,
    /// `rfc822Name`.
    pub email: Vec<String>,
    /// `iPAddress`.
    pub ip: Vec<IpAddr>,
}

/// One TLV: (tag, content, rest). Single-byte tags only, as X.509's are.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The elements of a constructed value's content.
fn elements(mut content: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, value, rest) = tlv(content)?;
        content = rest;
        Some((tag, value))
    })
}

const SEQUENCE: u8 = 0x30;
/// `[3] EXPLICIT Extensions` in a TBSCertificate.
const EXTENSIONS: u8 = 0xa3;
/// 2.5.29.17, subjectAltName.
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];

/// The SANs of `cert` (DER); `None` when it is not shaped like a certificate. A certificate
/// without the extension has no names.
pub fn subject_alt_names(cert: &[u8]) -> Option<Sans> {
    let (SEQUENCE, cert, _) = tlv(cert)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut sans = Sans::default();
    let Some((_, exts)) = elements(tbs).find(|(t, _)| *t == EXTENSIONS) else {
        return Some(sans);
    };
    let (SEQUENCE, exts, _) = tlv(exts)? else {
        return None;
    };
    for (tag, ext) in elements(exts) {
        if tag != SEQUENCE {
            return None;
        }
        let mut parts = elements(ext);
        let (0x06, oid) = parts.next()? else {
            return None;
        };
        if oid != SAN_OID {
            continue;
        }
        // `critical BOOLEAN DEFAULT FALSE` may come before the OCTET STRING.
        let value = parts.find(|(t, _)| *t == 0x04)?.1;
        let (SEQUENCE, names, _) = tlv(value)? else {
            return None;
        };
        for (tag, v) in elements(names) {
            let text = || String::from_utf8_lossy(v).into_owned();
            match tag {
                0x81 => sans.email.push(text()),
                0x82 => sans.dns.push(text()),
                0x86 => sans.uri.push(text()),
                0x87 => match v.len() {
                    4 => sans.ip.push(IpAddr::from(<[u8; 4]>::try_from(v).ok()?)),
                    16 => sans.ip.push(IpAddr::from(<[u8; 16]>::try_from(v).ok()?)),
                    _ => return None,
                },
                _ => {}
            }
        }
    }
    Some(sans)
}

/// The subject of `cert` (DER) as RFC 2253 writes it (`CN=a,O=b`, last RDN first), as
/// Envoy's `Subject=` in `x-forwarded-client-cert`; empty for an empty subject (Istio's
/// workload certificates). `None` when it is not shaped like a certificate.
pub fn subject(cert: &[u8]) -> Option<String> {
    let (SEQUENCE, cert, _) = tlv(cert)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(cert)? else {
        return None;
    };
    // [0] version, then serial, signature, issuer, validity, subject.
    let mut fields = elements(tbs).filter(|(t, _)| *t != 0xa0);
    let (SEQUENCE, name) = fields.nth(4)? else {
        return None;
    };
    let mut rdns = Vec::new();
    for (tag, rdn) in elements(name) {
        if tag != 0x31 {
            return None;
        }
        let mut parts = Vec::new();
        for (tag, atv) in elements(rdn) {
            if tag != SEQUENCE {
                return None;
            }
            let mut it = elements(atv);
            let (0x06, oid) = it.next()? else {
                return None;
            };
            let (_, value) = it.next()?;
            let key = match oid {
                [0x55, 0x04, 0x03] => "CN".to_string(),
                [0x55, 0x04, 0x06] => "C".into(),
                [0x55, 0x04, 0x07] => "L".into(),
                [0x55, 0x04, 0x08] => "ST".into(),
                [0x55, 0x04, 0x0a] => "O".into(),
                [0x55, 0x04, 0x0b] => "OU".into(),
                _ => oid_text(oid),
            };
            parts.push(format!("{key}={}", escape(&String::from_utf8_lossy(value))));
        }
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

/// Dotted form of an OID's content bytes.
fn oid_text(oid: &[u8]) -> String {
    let mut out = Vec::new();
    let mut n: u64 = 0;
    for (i, b) in oid.iter().enumerate() {
        n = (n << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if out.is_empty() {
                out.push((n / 40).min(2).to_string());
                out.push((n - 40 * (n / 40).min(2)).to_string());
            } else {
                out.push(n.to_string());
            }
            n = 0;
        }
        if i > 32 {
            break;
        }
    }
    out.join(".")
}

/// RFC 2253 escaping of an attribute value.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let edge = (i == 0 && (c == ' ' || c == '#')) || (i + 1 == v.chars().count() && c == ' ');
        if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') || edge {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DER of one TLV.
    fn enc(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        if content.len() < 0x80 {
            v.push(content.len() as u8);
        } else {
            v.extend([0x82, (content.len() >> 8) as u8, content.len() as u8]);
        }
        v.extend_from_slice(content);
        v
    }

    /// A certificate-shaped value whose TBSCertificate has `exts` as extensions (each an
    /// encoded Extension), after a filler standing for serial, issuer, subject and key.
    fn cert(exts: &[Vec<u8>]) -> Vec<u8> {
        let mut tbs = enc(0xa0, &enc(0x02, &[2]));
        tbs.extend(enc(0x02, &[7; 200]));
        tbs.extend(enc(EXTENSIONS, &enc(SEQUENCE, &exts.concat())));
        let mut c = enc(SEQUENCE, &tbs);
        c.extend(enc(SEQUENCE, &[]));
        enc(SEQUENCE, &c)
    }

    fn san_ext(critical: bool, names: &[(u8, &[u8])]) -> Vec<u8> {
        let names: Vec<u8> = names.iter().flat_map(|(t, v)| enc(*t, v)).collect();
        let mut e = enc(0x06, SAN_OID);
        if critical {
            e.extend(enc(0x01, &[0xff]));
        }
        e.extend(enc(0x04, &enc(SEQUENCE, &names)));
        enc(SEQUENCE, &e)
    }

    #[test]
    fn reads_every_kind_of_name_after_other_extensions() {
        let other = enc(
            SEQUENCE,
            &[enc(0x06, &[0x55, 0x1d, 0x0f]), enc(0x04, &[3, 2, 5, 160])].concat(),
        );
        let c = cert(&[
            other,
            san_ext(
                true,
                &[
                    (0x86, b"spiffe://cluster.local/ns/default/sa/reviews"),
                    (0x82, b"reviews.default.svc"),
                    (0x81, b"a@b.c"),
                    (0x87, &[10, 0, 0, 1]),
                    (0xa0, b"other name, skipped"),
                ],
            ),
        ]);
        let s = subject_alt_names(&c).unwrap();
        assert_eq!(s.uri, ["spiffe://cluster.local/ns/default/sa/reviews"]);
        assert_eq!(s.dns, ["reviews.default.svc"]);
        assert_eq!(s.email, ["a@b.c"]);
        assert_eq!(s.ip, [IpAddr::from([10, 0, 0, 1])]);
    }

    #[test]
    fn subject_in_rfc2253_order() {
        let atv = |oid: &[u8], v: &str| {
            enc(
                0x31,
                &enc(
                    SEQUENCE,
                    &[enc(0x06, oid), enc(0x0c, v.as_bytes())].concat(),
                ),
            )
        };
        let name = enc(
            SEQUENCE,
            &[
                atv(&[0x55, 4, 6], "US"),
                atv(&[0x55, 4, 10], "Acme, Inc"),
                atv(&[0x55, 4, 3], "web"),
            ]
            .concat(),
        );
        let mut tbs = enc(0xa0, &enc(0x02, &[2]));
        tbs.extend(enc(0x02, &[1]));
        tbs.extend(enc(SEQUENCE, &[]));
        tbs.extend(enc(SEQUENCE, &[]));
        tbs.extend(enc(SEQUENCE, &[]));
        tbs.extend(name);
        let c = enc(SEQUENCE, &enc(SEQUENCE, &tbs));
        assert_eq!(subject(&c).as_deref(), Some("CN=web,O=Acme\\, Inc,C=US"));
        assert_eq!(
            oid_text(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]),
            "1.2.840.113549"
        );
    }

    #[test]
    fn no_extension_means_no_names_and_garbage_is_refused() {
        assert_eq!(subject_alt_names(&cert(&[])), Some(Sans::default()));
        let c = cert(&[san_ext(false, &[(0x86, b"spiffe://x/y")])]);
        for cut in 0..c.len() {
            // Truncations never panic, and never invent a name.
            if let Some(s) = subject_alt_names(&c[..cut]) {
                assert!(s.uri.is_empty() || s.uri == ["spiffe://x/y"]);
            }
        }
        assert_eq!(subject_alt_names(b"not a certificate"), None);
    }
}
