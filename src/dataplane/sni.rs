//! The server name of a TLS ClientHello (for `tls[]` routes and TLS passthrough), read from
//! the first bytes of a connection without terminating TLS. Every length is checked: a peer
//! controls these bytes.

/// What the first bytes say.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// A ClientHello, with its server name if it sent one.
    Tls(Option<String>),
    /// Not TLS.
    NotTls,
    /// TLS, but the ClientHello is not complete yet.
    Incomplete,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2).map(|b| (b[0] as usize) << 8 | b[1] as usize)
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3).map(|b| (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize)
    }
}

pub fn parse(buf: &[u8]) -> Hello {
    if buf.is_empty() {
        return Hello::Incomplete;
    }
    if buf[0] != 0x16 {
        return Hello::NotTls;
    }
    if buf.len() < 5 {
        return Hello::Incomplete;
    }
    if buf[1] != 3 {
        return Hello::NotTls;
    }
    let record_len = (buf[3] as usize) << 8 | buf[4] as usize;
    let Some(record) = buf.get(5..5 + record_len) else {
        return Hello::Incomplete;
    };
    match client_hello_sni(record) {
        Some(sni) => Hello::Tls(sni),
        None => Hello::NotTls,
    }
}

/// `Some(None)`: a ClientHello without SNI; `None`: malformed.
fn client_hello_sni(record: &[u8]) -> Option<Option<String>> {
    let mut r = Reader { buf: record };
    if r.u8()? != 1 {
        return None;
    }
    let len = r.u24()?;
    let mut r = Reader { buf: r.take(len)? };
    r.take(2 + 32)?;
    let sid = r.u8()?;
    r.take(sid)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let comp = r.u8()?;
    r.take(comp)?;
    if r.buf.is_empty() {
        return Some(None);
    }
    let ext_len = r.u16()?;
    let mut exts = Reader { buf: r.take(ext_len)? };
    while !exts.buf.is_empty() {
        let kind = exts.u16()?;
        let len = exts.u16()?;
        let data = exts.take(len)?;
        if kind != 0 {
            continue;
        }
        let mut d = Reader { buf: data };
        let list = d.u16()?;
        let mut names = Reader { buf: d.take(list)? };
        while !names.buf.is_empty() {
            let name_type = names.u8()?;
            let n = names.u16()?;
            let name = names.take(n)?;
            if name_type == 0 {
                let s = std::str::from_utf8(name).ok()?;
                return Some(Some(s.to_ascii_lowercase()));
            }
        }
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello, as rustls writes it.
    fn client_hello(name: &str) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        let _ = &mut roots;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_the_server_name_of_a_real_client_hello() {
        let hello = client_hello("www.Example.com");
        assert_eq!(parse(&hello), Hello::Tls(Some("www.example.com".into())));
        for cut in [1, 4, 5, 40, hello.len() - 1] {
            assert_eq!(parse(&hello[..cut]), Hello::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn other_protocols_and_garbage_are_not_tls() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(parse(&[0x16, 3, 1, 0, 4, 9, 9, 9, 9]), Hello::NotTls);
        assert_eq!(parse(&[0x16, 3, 1, 0, 1, 1]), Hello::NotTls);
        assert_eq!(parse(&[0x16, 9, 9, 9, 9]), Hello::NotTls);
        // IP literals get no SNI.
        let hello = client_hello("127.0.0.1");
        assert_eq!(parse(&hello), Hello::Tls(None));
    }
}
