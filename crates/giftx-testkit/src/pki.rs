//! Test certificates, made by the `openssl` CLI in a directory: a CA, a
//! server certificate for `127.0.0.1` / `localhost` signed by it, and
//! client certificates signed by it (for mTLS). ECDSA P-256, valid two
//! days.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A CA and the certificates it signed, as PEM files in `dir`.
#[derive(Debug)]
pub struct TestPki {
    dir: PathBuf,
}

const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (`apt-get install openssl`)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestPki {
    /// A CA (`ca.crt`, `ca.key`) named `name` and a server certificate
    /// (`server.crt`, `server.key`) in `dir`.
    ///
    /// # Panics
    /// When `openssl` is missing or fails.
    pub fn new(dir: &Path, name: &str) -> TestPki {
        let subject = format!("/CN={name}");
        openssl(
            dir,
            &[
                &["req", "-x509"][..],
                &EC,
                &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2"],
                &["-subj", &subject],
                &["-addext", "basicConstraints=critical,CA:TRUE"],
                &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            ]
            .concat(),
        );
        let pki = TestPki {
            dir: dir.to_owned(),
        };
        pki.sign(
            "server",
            "/CN=127.0.0.1",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        );
        pki
    }

    /// A client certificate `<name>.crt` / `<name>.key` signed by the CA.
    pub fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        self.client_with_uris(name, &[])
    }

    /// As [`TestPki::client`], with subjectAltName URIs (such as
    /// `giftx:apiKeys/<id>`, naming the API key the certificate stands
    /// for).
    pub fn client_with_uris(&self, name: &str, uris: &[&str]) -> (PathBuf, PathBuf) {
        let mut ext = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                       extendedKeyUsage=clientAuth\n"
            .to_owned();
        if !uris.is_empty() {
            let names: Vec<String> = uris.iter().map(|u| format!("URI:{u}")).collect();
            ext.push_str(&format!("subjectAltName={}\n", names.join(",")));
        }
        self.sign(name, &format!("/CN={name}"), &ext);
        (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        )
    }

    fn sign(&self, name: &str, subject: &str, ext: &str) {
        let d = &self.dir;
        let ext_file = format!("{name}.ext");
        std::fs::write(d.join(&ext_file), ext).expect("write extensions");
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        openssl(
            d,
            &[
                &["req"][..],
                &EC,
                &["-keyout", &key, "-out", &csr, "-subj", subject],
            ]
            .concat(),
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext_file,
            ],
        );
    }

    /// The CA's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The server's certificate chain.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }

    /// The server's key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
}
