//! The interop matrix: what keyturn writes for issuers and verifiers works in the stacks they
//! really use. Over keys the running operator produced (all 9 algorithms, RSA 2048/3072/4096):
//!
//! - each `private.pem` (PKCS#8 v1) loads in OpenSSL 3 (`openssl pkey -check`), Node `crypto`,
//!   Python `cryptography`, Go `crypto/x509`, Java JCA (`KeyFactory` + `PKCS8EncodedKeySpec`) and
//!   Rust `jsonwebtoken`, and holds the key of `private.jwk.json`;
//! - a token signed from `private.pem` by each of PyJWT, Node `jose`, go-jose, Nimbus JOSE+JWT
//!   and `jsonwebtoken` verifies in every one of them against the published JWKS (the
//!   ConfigMap's `jwks.json`, held locally: no verifier can refetch, so a kid that is not
//!   published fails), the algorithm pinned to the set's;
//! - controls every verifier must refuse: a tampered signature, a key that is not published
//!   claiming a published kid, an unknown kid, an expired token.
//!
//! The tables of `docs/interop.md` are generated from these results: the test fails on any
//! red cell and when the committed tables differ from the measured ones
//! (`KEYTURN_WRITE_DOCS=1` rewrites them). The stacks' programs live in
//! `tests/verifiers/interop/`; `hack/test-deps.sh` installs them.
//!
//! Also: a Secret written by an older keyturn (Ed25519 in the PKCS#8 v2 form those stacks
//! reject) is rewritten once, same key and kid, and then passes the same checks; and keys
//! OpenSSL made load with the kids Python computes, and are encoded back byte for byte.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{DecodingKey, Header, Validation};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::support::invariants::{jwt_alg, secret_str as data};
use keyturn::core::crd::Algorithm;
use keyturn::core::keys::KeyPair;

fn verifiers_dir() -> PathBuf {
    PathBuf::from(std::env::var("KEYTURN_TEST_VERIFIERS").unwrap_or_else(|_| {
        panic!("KEYTURN_TEST_VERIFIERS is not set: run hack/test.sh, or hack/test-deps.sh DIR and export it")
    }))
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One key under test, as the files an issuer and a verifier would mount.
struct Case {
    name: String,
    alg: Algorithm,
    kid: String,
    private_pem: String,
    private_jwk: String,
    jwks: String,
}

impl Case {
    fn new(name: &str, signing: &Secret, jwks: &ConfigMap) -> Case {
        Case {
            name: name.to_string(),
            alg: Algorithm::parse(&data(signing, "alg")).unwrap(),
            kid: data(signing, "kid"),
            private_pem: data(signing, "private.pem"),
            private_jwk: data(signing, "private.jwk.json"),
            jwks: String::from_utf8(support::invariants::jwks_of(jwks)).unwrap(),
        }
    }

    fn write(&self, cases: &Path) {
        let d = cases.join(&self.name);
        std::fs::create_dir_all(&d).unwrap();
        for (file, text) in [
            ("alg", self.alg.as_str()),
            ("kid", &self.kid),
            ("private.pem", &self.private_pem),
            ("private.jwk.json", &self.private_jwk),
            ("jwks.json", &self.jwks),
        ] {
            std::fs::write(d.join(file), text).unwrap();
        }
    }
}

/// A stack of the matrix: a column for loading keys, a signer and a verifier.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Stack {
    OpenSsl,
    Node,
    Python,
    Go,
    Java,
    Rust,
}

impl Stack {
    const ALL: [Stack; 6] = [
        Stack::OpenSsl,
        Stack::Node,
        Stack::Python,
        Stack::Go,
        Stack::Java,
        Stack::Rust,
    ];

    /// The directory name of its tokens (and the key of its results).
    fn id(self) -> &'static str {
        match self {
            Stack::OpenSsl => "openssl",
            Stack::Node => "node",
            Stack::Python => "python",
            Stack::Go => "go",
            Stack::Java => "java",
            Stack::Rust => "rust",
        }
    }

    fn signs(self) -> bool {
        self != Stack::OpenSsl
    }

    /// What loads the PEM (the load table's column).
    fn loader(self) -> String {
        match self {
            Stack::OpenSsl => "OpenSSL 3 `openssl pkey -check`".into(),
            Stack::Node => "Node `crypto`".into(),
            Stack::Python => "Python `cryptography`".into(),
            Stack::Go => "Go `crypto/x509`".into(),
            Stack::Java => "Java JCA `KeyFactory`".into(),
            Stack::Rust => format!("Rust jsonwebtoken {}", pins().jsonwebtoken),
        }
    }

    /// The JWT library, with the version pinned in the repository.
    fn jwt(self) -> String {
        let p = pins();
        match self {
            Stack::OpenSsl => unreachable!("OpenSSL is not a JWT stack"),
            Stack::Node => format!("Node jose {}", p.jose),
            Stack::Python => format!("PyJWT {}", p.pyjwt),
            Stack::Go => format!("go-jose {}", p.go_jose),
            Stack::Java => format!("Nimbus JOSE+JWT {}", p.nimbus),
            Stack::Rust => format!("Rust jsonwebtoken {}", p.jsonwebtoken),
        }
    }

    fn command(self, mode: &str, cases: &Path, dir: &Path) -> Command {
        let v = verifiers_dir();
        let mut c = match self {
            Stack::Node => {
                let mut c = Command::new("node");
                c.arg(v.join("interop.mjs"));
                c
            }
            Stack::Python => {
                let mut c = Command::new("python3");
                c.arg(v.join("interop.py"))
                    .env("PYTHONPATH", v.join("python"));
                c
            }
            Stack::Go => Command::new(v.join("interop-go")),
            Stack::Java => {
                let mut c = Command::new("java");
                let cp = format!(
                    "{}:{}/*",
                    v.join("java/classes").display(),
                    v.join("java/lib").display()
                );
                c.args(["-cp", &cp, "Interop"]);
                c
            }
            Stack::OpenSsl | Stack::Rust => unreachable!("run in-process"),
        };
        c.arg(mode).arg(cases).arg(dir);
        c
    }
}

/// The library versions the repository pins, read from the pin files (one home for each).
struct Pins {
    jose: String,
    pyjwt: String,
    go_jose: String,
    nimbus: String,
    jsonwebtoken: String,
}

fn pins() -> &'static Pins {
    static PINS: std::sync::OnceLock<Pins> = std::sync::OnceLock::new();
    PINS.get_or_init(|| {
        let read = |p: &str| std::fs::read_to_string(repo().join(p)).unwrap();
        let package: serde_json::Value =
            serde_json::from_str(&read("tests/verifiers/package.json")).unwrap();
        let pom = read("tests/verifiers/interop/java/pom.xml");
        let after = |text: &str, marker: &str, open: &str, close: &str| -> String {
            let rest = &text[text.find(marker).unwrap_or_else(|| panic!("{marker}"))..];
            let rest = &rest[rest.find(open).unwrap() + open.len()..];
            rest[..rest.find(close).unwrap()].to_string()
        };
        Pins {
            jose: package["dependencies"]["jose"].as_str().unwrap().into(),
            pyjwt: after(
                &read("tests/verifiers/requirements.txt"),
                "pyjwt",
                "==",
                "\n",
            ),
            go_jose: after(
                &read("tests/verifiers/interop/go/go.mod"),
                "github.com/go-jose/go-jose/v4",
                " ",
                "\n",
            )
            .trim()
            .to_string(),
            nimbus: after(&pom, "nimbus-jose-jwt", "<version>", "<"),
            jsonwebtoken: after(
                &read("Cargo.lock"),
                "name = \"jsonwebtoken\"",
                "version = \"",
                "\"",
            ),
        }
    })
}

/// What one check found: `Ok` or the stack's own error text.
type Outcome = Result<(), String>;

/// Every result of one run, keyed by (check, signer or "", stack, case).
#[derive(Default)]
struct Results(BTreeMap<(String, String, Stack, String), Outcome>);

impl Results {
    fn get(&self, check: &str, signer: &str, stack: Stack, case: &str) -> Outcome {
        self.0
            .get(&(check.into(), signer.into(), stack, case.into()))
            .cloned()
            .unwrap_or_else(|| Err(format!("{} reported no {check} result", stack.id())))
    }

    fn put(&mut self, check: &str, signer: &str, stack: Stack, case: &str, o: Outcome) {
        self.0
            .insert((check.into(), signer.into(), stack, case.into()), o);
    }

    /// Reads the JSON lines a stack's program printed.
    fn parse(&mut self, stack: Stack, out: &std::process::Output) {
        assert!(
            out.status.success(),
            "{} exited with {}: {}",
            stack.id(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not a result line ({e}): {line}", stack.id()));
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            let o = if v["ok"] == true {
                Ok(())
            } else {
                Err(s("error"))
            };
            self.put(&s("check"), &s("signer"), stack, &s("case"), o);
        }
    }
}

/// The controls every verifier must refuse (their tokens are made by `controls`).
const CONTROLS: [(&str, &str); 4] = [
    (
        "control-tampered",
        "a published key's token with one signature character changed",
    ),
    (
        "control-impostor",
        "signed by a key that is not published, claiming the published kid",
    ),
    (
        "control-unknown-kid",
        "signed by a key that is not published, under its own kid",
    ),
    (
        "control-expired",
        "signed by the published key, `exp` an hour ago",
    ),
];

fn claims(case: &str, exp_in: i64) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp();
    json!({"iss": "keyturn-interop", "sub": case, "iat": now, "exp": now + exp_in})
}

/// jsonwebtoken as an issuer: the key from `private.pem`, `kid` in the header.
fn rust_sign(
    alg: Algorithm,
    pem: &str,
    kid: &str,
    claims: &serde_json::Value,
) -> Result<String, String> {
    use jsonwebtoken::EncodingKey;
    let key = match alg {
        a if a.is_rsa() => EncodingKey::from_rsa_pem(pem.as_bytes()),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
        _ => EncodingKey::from_ed_pem(pem.as_bytes()),
    }
    .map_err(|e| format!("private.pem: {e}"))?;
    let mut header = Header::new(jwt_alg(alg));
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &key).map_err(|e| e.to_string())
}

/// jsonwebtoken as a verifier: the key found by kid in a local JWKS, the algorithm pinned.
fn rust_verify(case: &Case, token: &str) -> Outcome {
    let set: JwkSet = serde_json::from_str(&case.jwks).map_err(|e| format!("jwks.json: {e}"))?;
    let kid = jsonwebtoken::decode_header(token)
        .map_err(|e| e.to_string())?
        .kid
        .ok_or("no kid")?;
    let jwk = set
        .find(&kid)
        .ok_or(format!("kid {kid} is not in the JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut v = Validation::new(jwt_alg(case.alg));
    v.set_issuer(&["keyturn-interop"]);
    v.sub = Some(case.name.clone());
    v.set_required_spec_claims(&["exp", "iss", "sub"]);
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The Rust loader: `private.pem` signs a token that `private.jwk.json` (its public members)
/// verifies, which holds only if both are the same key.
fn rust_load(case: &Case) -> Outcome {
    let token = rust_sign(
        case.alg,
        &case.private_pem,
        &case.kid,
        &claims(&case.name, 60),
    )?;
    let jwk: Jwk =
        serde_json::from_str(&case.private_jwk).map_err(|e| format!("private.jwk.json: {e}"))?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    jsonwebtoken::decode::<serde_json::Value>(&token, &key, &Validation::new(jwt_alg(case.alg)))
        .map(|_| ())
        .map_err(|_| "private.pem and private.jwk.json hold different keys".into())
}

fn openssl_load(cases: &Path, case: &Case) -> Outcome {
    let out = Command::new("openssl")
        .args(["pkey", "-noout", "-check", "-in"])
        .arg(cases.join(&case.name).join("private.pem"))
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// The control tokens, one per case and control, written as TOKENS/<control>/<case>.jwt.
fn controls(case: &Case, valid: &str, tokens: &Path) {
    let bits = (case.alg.is_rsa()).then(|| rsa_bits(&case.jwks, &case.kid));
    let stranger = keyturn::core::keys::KeyPair::generate(case.alg, bits).unwrap();
    let stranger_pem = stranger.to_pkcs8_pem();
    let mut sig: Vec<char> = valid.rsplit('.').next().unwrap().chars().collect();
    let i = sig.len() / 2;
    sig[i] = if sig[i] == 'A' { 'B' } else { 'A' };
    let (head, _) = valid.rsplit_once('.').unwrap();
    let tampered = format!("{head}.{}", sig.into_iter().collect::<String>());
    let c = claims(&case.name, 600);
    // In the order of CONTROLS, which names them.
    let made: [String; CONTROLS.len()] = [
        tampered,
        rust_sign(case.alg, &stranger_pem, &case.kid, &c).unwrap(),
        rust_sign(case.alg, &stranger_pem, stranger.kid(), &c).unwrap(),
        rust_sign(
            case.alg,
            &case.private_pem,
            &case.kid,
            &claims(&case.name, -3600),
        )
        .unwrap(),
    ];
    for ((control, _), token) in CONTROLS.iter().zip(made) {
        let d = tokens.join(control);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("{}.jwt", case.name)), token).unwrap();
    }
}

/// The modulus size of a published RSA key, so that the impostor's key is the same size.
fn rsa_bits(jwks: &str, kid: &str) -> u32 {
    let set: serde_json::Value = serde_json::from_str(jwks).unwrap();
    let k = set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap();
    URL_SAFE_NO_PAD
        .decode(k["n"].as_str().unwrap())
        .unwrap()
        .len() as u32
        * 8
}

/// Runs the whole matrix over the cases in a scratch directory; returns every result.
fn run_matrix(cases: &[Case]) -> Results {
    let dir = std::env::temp_dir().join(format!(
        "keyturn-interop-{}-{}",
        std::process::id(),
        cases[0].name
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let (case_dir, tokens) = (dir.join("cases"), dir.join("tokens"));
    for c in cases {
        c.write(&case_dir);
    }
    let mut r = Results::default();
    for stack in Stack::ALL {
        let out = tokens.join(stack.id());
        if stack.signs() {
            std::fs::create_dir_all(&out).unwrap();
        }
        match stack {
            Stack::OpenSsl => {
                for c in cases {
                    r.put("load", "", stack, &c.name, openssl_load(&case_dir, c));
                }
            }
            Stack::Rust => {
                for c in cases {
                    r.put("load", "", stack, &c.name, rust_load(c));
                    let token = rust_sign(c.alg, &c.private_pem, &c.kid, &claims(&c.name, 600));
                    if let Ok(t) = &token {
                        std::fs::write(out.join(format!("{}.jwt", c.name)), t).unwrap();
                        controls(c, t, &tokens);
                    }
                    r.put("sign", "", stack, &c.name, token.map(|_| ()));
                }
            }
            _ => {
                let o = stack
                    .command("sign", &case_dir, &out)
                    .output()
                    .unwrap_or_else(|e| panic!("{}: {e}", stack.id()));
                r.parse(stack, &o);
            }
        }
    }
    for stack in Stack::ALL.into_iter().filter(|s| s.signs()) {
        if stack == Stack::Rust {
            for signer in std::fs::read_dir(&tokens).unwrap() {
                let signer = signer.unwrap().file_name().into_string().unwrap();
                for c in cases {
                    let file = tokens.join(&signer).join(format!("{}.jwt", c.name));
                    if let Ok(token) = std::fs::read_to_string(&file) {
                        r.put(
                            "verify",
                            &signer,
                            stack,
                            &c.name,
                            rust_verify(c, token.trim()),
                        );
                    }
                }
            }
        } else {
            let o = stack
                .command("verify", &case_dir, &tokens)
                .output()
                .unwrap_or_else(|e| panic!("{}: {e}", stack.id()));
            r.parse(stack, &o);
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    r
}

/// The key a case holds, as a reader of the tables names it.
fn describe(case: &Case) -> String {
    let key = match case.alg {
        a if a.is_rsa() => format!("RSA {}", rsa_bits(&case.jwks, &case.kid)),
        Algorithm::ES256 => "P-256".into(),
        Algorithm::ES384 => "P-384".into(),
        _ => "Ed25519".into(),
    };
    format!("{} ({key})", case.alg.as_str())
}

/// The tables of docs/interop.md, and every red cell's detail.
fn tables(cases: &[Case], r: &Results) -> (String, Vec<String>) {
    let mut red = Vec::new();
    let mut cell = |what: String, o: Outcome, want_ok: bool| -> bool {
        match (o, want_ok) {
            (Ok(()), true) | (Err(_), false) => true,
            (Ok(()), false) => {
                red.push(format!("{what}: accepted"));
                false
            }
            (Err(e), true) => {
                red.push(format!("{what}: {e}"));
                false
            }
        }
    };
    let mark = |ok: bool| if ok { "✅" } else { "❌" };
    let row = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let rule = |n: usize| row(vec!["---".to_string(); n]);
    let signers: Vec<Stack> = Stack::ALL.into_iter().filter(|s| s.signs()).collect();
    let mut out = String::new();

    out.push_str("### `private.pem` loads, and holds the key of `private.jwk.json`\n\n");
    let mut head = vec!["key".to_string()];
    head.extend(Stack::ALL.iter().map(|s| s.loader()));
    out.push_str(&row(head));
    out.push_str(&rule(Stack::ALL.len() + 1));
    for c in cases {
        let mut cells = vec![describe(c)];
        for s in Stack::ALL {
            let ok = cell(
                format!("{} loading {}", s.loader(), c.name),
                r.get("load", "", s, &c.name),
                true,
            );
            cells.push(mark(ok).into());
        }
        out.push_str(&row(cells));
    }

    out.push_str("\n### Tokens: signed by each stack, verified by each stack\n\n");
    out.push_str(&format!(
        "Rows sign (from `private.pem`), columns verify against the published JWKS; a cell counts the keys of the table above ({} in all). The controls must be refused.\n\n",
        cases.len()
    ));
    let mut head = vec!["signed by ↓ / verified by →".to_string()];
    head.extend(signers.iter().map(|s| s.jwt()));
    out.push_str(&row(head));
    out.push_str(&rule(signers.len() + 1));
    let rows: Vec<(String, String, bool)> = signers
        .iter()
        .map(|s| (s.id().to_string(), s.jwt(), true))
        .chain(
            CONTROLS
                .iter()
                .map(|(id, what)| (id.to_string(), format!("control: {what}"), false)),
        )
        .collect();
    for (signer, label, want_ok) in &rows {
        let mut cells = vec![label.clone()];
        for v in &signers {
            let good = cases
                .iter()
                .filter(|c| {
                    let signed = signers
                        .iter()
                        .find(|s| s.id() == signer)
                        .map_or(Ok(()), |s| r.get("sign", "", *s, &c.name));
                    let ok = cell(format!("{label} signing {}", c.name), signed, true);
                    cell(
                        format!("{} verifying {label}'s {} token", v.jwt(), c.name),
                        r.get("verify", signer, *v, &c.name),
                        *want_ok,
                    ) && ok
                })
                .count();
            let verb = if *want_ok { "" } else { "refused " };
            cells.push(format!(
                "{} {verb}{good}/{}",
                mark(good == cases.len()),
                cases.len()
            ));
        }
        out.push_str(&row(cells));
    }
    red.sort();
    red.dedup();
    (out, red)
}

const BEGIN: &str = "<!-- begin: generated by tests/it/interop.rs from its results -->";
const END: &str = "<!-- end: generated -->";

/// Compares the measured tables with docs/interop.md's, or writes them there when
/// `KEYTURN_WRITE_DOCS=1`.
fn check_docs(measured: &str, write: bool) {
    let path = repo().join("docs/interop.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (start, end) = (
        doc.find(BEGIN).expect("docs/interop.md: no begin marker") + BEGIN.len(),
        doc.find(END).expect("docs/interop.md: no end marker"),
    );
    let want = format!("\n{measured}");
    if write {
        std::fs::write(&path, format!("{}{want}{}", &doc[..start], &doc[end..])).unwrap();
    } else {
        assert_eq!(
            &doc[start..end],
            want,
            "docs/interop.md does not show what the matrix measured: run this test with KEYTURN_WRITE_DOCS=1 and commit"
        );
    }
}

/// Reads a set's keys as workloads see them once the set is Ready: the signing Secret and the
/// JWKS ConfigMap holding its kid.
async fn case_of(client: &kube::Client, ns: &str, name: &str) -> Case {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let s = support::wait_object(
        &secrets,
        &format!("{name}-signing-key"),
        "signing Secret",
        Duration::from_secs(180),
        |o: Option<&Secret>| o.is_some(),
    )
    .await
    .unwrap();
    let kid = data(&s, "kid");
    let cm = support::wait_object(
        &maps,
        &format!("{name}-jwks"),
        "JWKS with the signing kid",
        Duration::from_secs(60),
        |o: Option<&ConfigMap>| o.is_some_and(|cm| support::invariants::kids_of(cm).contains(&kid)),
    )
    .await
    .unwrap();
    Case::new(name, &s, &cm)
}

#[tokio::test]
async fn interop_matrix_every_key_loads_and_every_stack_verifies_every_other() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "interop").await;
    let _op = support::Operator::start(&ns);
    let mut sets: Vec<(String, serde_json::Value)> = Algorithm::ALL
        .iter()
        .map(|a| (a.as_str().to_lowercase(), json!({"algorithm": a.as_str()})))
        .collect();
    for bits in [3072, 4096] {
        sets.push((
            format!("rs256-{bits}"),
            json!({"algorithm": "RS256", "rsaKeySize": bits}),
        ));
    }
    for (name, spec) in &sets {
        support::create_set(&client, &ns, name, spec.clone()).await;
    }
    let mut cases = Vec::new();
    for (name, _) in &sets {
        cases.push(case_of(&client, &ns, name).await);
    }
    let results = run_matrix(&cases);
    let (measured, red) = tables(&cases, &results);
    println!("{measured}");
    let write = std::env::var("KEYTURN_WRITE_DOCS").as_deref() == Ok("1");
    if write {
        check_docs(&measured, true);
    }
    assert!(red.is_empty(), "red cells:\n{}", red.join("\n"));
    check_docs(&measured, write);
}

#[tokio::test]
async fn an_old_eddsa_signing_secret_is_rewritten_once_in_the_v1_form() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "upgrade").await;
    let mut op = support::Operator::start(&ns);
    support::create_set(&client, &ns, "ed", json!({"algorithm": "EdDSA"})).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let sets: Api<keyturn::core::crd::SigningKeySet> = Api::namespaced(client.clone(), &ns);
    let ready = |o: Option<&keyturn::core::crd::SigningKeySet>| {
        o.and_then(|s| s.status.as_ref()).is_some_and(|st| {
            st.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    };
    // Settled (the key's activation recorded) before the old operator goes away.
    support::wait_object(&sets, "ed", "Ready", Duration::from_secs(60), ready).await;
    let s = secrets.get("ed-signing-key").await.unwrap();
    op.kill();
    let kid = data(&s, "kid");
    let v1 = data(&s, "private.pem");

    // What keyturn wrote before: the same key as PKCS#8 v2 (RFC 5958 with the public key), in
    // the signing Secret and in the internal state.
    let jwk: serde_json::Value = serde_json::from_str(&data(&s, "private.jwk.json")).unwrap();
    let seed = URL_SAFE_NO_PAD.decode(jwk["d"].as_str().unwrap()).unwrap();
    // ed25519-dalek's own encoding (v2) is what keyturn stored and wrote before.
    let seed: [u8; 32] = seed.try_into().unwrap();
    let v2 = {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        ed25519_dalek::SigningKey::from_bytes(&seed)
            .to_pkcs8_pem(pkcs8::LineEnding::LF)
            .unwrap()
            .to_string()
    };
    let out = Command::new("openssl")
        .args(["pkey", "-noout"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(v2.as_bytes())?;
            c.wait()
        })
        .unwrap();
    assert!(!out.success(), "control: OpenSSL 3.0 rejects the v2 form");
    let internal = secrets.get("ed-keyturn-keys").await.unwrap();
    let mut state: serde_json::Value =
        serde_json::from_slice(&internal.data.as_ref().unwrap()["state.json"].0).unwrap();
    for k in state["keys"].as_array_mut().unwrap() {
        if k["kid"] == kid.as_str() {
            k["privatePem"] = json!(v2);
        }
    }
    let enc = |b: &[u8]| STANDARD.encode(b);
    for (name, key, value) in [
        (
            "ed-keyturn-keys",
            "state.json",
            serde_json::to_vec(&state).unwrap(),
        ),
        ("ed-signing-key", "private.pem", v2.as_bytes().to_vec()),
    ] {
        secrets
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {key: enc(&value)}})),
            )
            .await
            .unwrap();
    }

    assert_eq!(
        data(&secrets.get("ed-signing-key").await.unwrap(), "private.pem"),
        v2,
        "the old form is in place"
    );
    // The upgraded operator writes the v1 form once: same key, same kid.
    op.restart();
    let fixed = support::wait_object(
        &secrets,
        "ed-signing-key",
        "private.pem rewritten",
        Duration::from_secs(60),
        |o: Option<&Secret>| {
            o.is_some_and(|s| {
                // The base64 of RFC 8410's v1 prefix (30 2e 02 01 00 ...) opens the body.
                String::from_utf8_lossy(&s.data.as_ref().unwrap()["private.pem"].0)
                    .lines()
                    .nth(1)
                    .is_some_and(|l| l.starts_with("MC4CAQAwBQYDK2VwBCIEI"))
            })
        },
    )
    .await
    .unwrap();
    assert_eq!(data(&fixed, "kid"), kid, "same kid");
    assert_eq!(
        data(&fixed, "private.pem"),
        v1,
        "the v1 form of the same key"
    );
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let case = Case::new("upgraded", &fixed, &maps.get("ed-jwks").await.unwrap());
    let (_, red) = tables(
        std::slice::from_ref(&case),
        &run_matrix(std::slice::from_ref(&case)),
    );
    assert!(
        red.is_empty(),
        "the upgraded key, red cells:\n{}",
        red.join("\n")
    );
    let rv = fixed.metadata.resource_version.clone();
    // Settled: Ready with this key, and the rewrite was the signing Secret's only write.
    support::wait_object(
        &sets,
        "ed",
        "Ready after the upgrade",
        Duration::from_secs(30),
        ready,
    )
    .await;
    let (_, metrics) = op.admin_get("/metrics").unwrap();
    let writes = |object: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("keyturn_writes_total{{object=\"{object}\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.parse::<f64>().unwrap() as u64)
            .unwrap_or(0)
    };
    assert_eq!(writes("signing_secret"), 1, "{metrics}");
    assert_eq!(writes("internal_secret"), 0, "{metrics}");
    assert_eq!(
        secrets
            .get("ed-signing-key")
            .await
            .unwrap()
            .metadata
            .resource_version,
        rv,
        "steady state writes nothing more"
    );
}

/// Keys keyturn did not make (OpenSSL 3 `genpkey`, made now: the encoding keyturn's Secrets
/// hold, and what an upgrade of the crypto crates must keep reading) load, their kids are the
/// RFC 7638 thumbprints Python computes from the public key, and keyturn encodes them back
/// byte for byte, so a Secret written before an upgrade is never rewritten by it.
#[test]
fn openssl_keys_load_with_independent_kids_and_encode_back_unchanged() {
    let dir = std::env::temp_dir().join(format!("keyturn-openssl-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            Algorithm::RS256,
            "rsa2048",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
        ),
        (
            Algorithm::ES256,
            "p256",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
        (
            Algorithm::ES384,
            "p384",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        ),
        (Algorithm::EdDSA, "ed25519", &["-algorithm", "ED25519"]),
    ];
    let paths: Vec<PathBuf> = cases
        .iter()
        .map(|(_, file, args)| {
            let path = dir.join(format!("{file}.pem"));
            let out = Command::new("openssl")
                .arg("genpkey")
                .args(*args)
                .arg("-out")
                .arg(&path)
                .output()
                .unwrap();
            assert!(out.status.success(), "openssl genpkey {file}: {out:?}");
            path
        })
        .collect();
    let v = verifiers_dir();
    let out = Command::new("python3")
        .arg(v.join("interop.py"))
        .arg("kid")
        .args(&paths)
        .env("PYTHONPATH", v.join("python"))
        .output()
        .unwrap();
    assert!(out.status.success(), "interop.py kid: {out:?}");
    let kids: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(kids.len(), cases.len());
    for (((alg, file, _), path), kid) in cases.iter().zip(&paths).zip(&kids) {
        let pem = std::fs::read_to_string(path).unwrap();
        let kp = KeyPair::from_pkcs8_pem(*alg, &pem).unwrap();
        assert_eq!(kp.kid(), kid, "{file}: kid");
        assert_eq!(
            kp.to_pkcs8_pem().as_str(),
            pem,
            "{file}: encoded back byte for byte"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
