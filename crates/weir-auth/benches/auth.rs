//! What an authentication costs the server, per mechanism, side by side: a PLAIN login (one
//! key derivation, 4,096 rounds), a whole SCRAM-SHA-256 and SCRAM-SHA-512 exchange (the
//! server's part: HMACs and hashes, no derivation; the client does that), an HTTP request's
//! API token lookup (one SHA-256), and JWT checks (HS256, ES256). The client's side of SCRAM is timed
//! too, since a reconnect storm pays it on every client.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use weir_auth::scram_client::ScramClient;
use weir_auth::{Auth, AuthConfig, SaslStep, ScramHash, User, UserFile, UserStore};

const PASSWORD: &str = "a password of some length";

thread_local! {
    /// An EC P-256 key pair for ES256 tokens.
    static ES256: rcgen::KeyPair = rcgen::KeyPair::generate().unwrap();
}

fn setup() -> (tempfile::TempDir, Auth, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.json");
    let (token, stored) = weir_auth::users::new_token();
    UserFile::edit(&path, |f| {
        let mut u = User::with_password(PASSWORD, weir_auth::DEFAULT_ITERATIONS);
        u.tokens.push(stored);
        f.users.insert("alice".into(), u);
        Ok(())
    })
    .unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, [7u8; 32]).unwrap();
    let public = dir.path().join("es256.pem");
    std::fs::write(&public, ES256.with(|k| k.public_key_pem())).unwrap();
    let jwt = weir_auth::jwt::Jwt::load(&weir_auth::jwt::JwtFiles {
        hs256_secret: Some(secret),
        public_key: Some(public),
        ..Default::default()
    })
    .unwrap();
    let config = AuthConfig {
        jwt: Some(std::sync::Arc::new(jwt)),
        ..AuthConfig::default()
    };
    (
        dir,
        Auth::new(UserStore::open(path).unwrap(), config),
        token,
    )
}

fn logins(c: &mut Criterion) {
    let (_dir, auth, token) = setup();
    let mut g = c.benchmark_group("auth/server");
    g.bench_function("PLAIN login", |b| {
        b.iter(|| {
            let mut s = auth.start("PLAIN", None).unwrap();
            let r = auth.step(&mut s, format!("\0alice\0{PASSWORD}").as_bytes());
            assert!(matches!(r, Ok(SaslStep::Done(..))));
        })
    });
    for (name, hash) in [
        ("SCRAM-SHA-256", ScramHash::Sha256),
        ("SCRAM-SHA-512", ScramHash::Sha512),
    ] {
        // A client per round makes its messages (its key derivation untimed); only the
        // server's two steps are timed.
        g.bench_function(format!("{name} exchange"), |b| {
            b.iter_custom(|iters| {
                let mut spent = std::time::Duration::ZERO;
                for _ in 0..iters {
                    let mut client = ScramClient::new(hash, "alice", PASSWORD);
                    let t = std::time::Instant::now();
                    let mut s = auth.start(name, None).unwrap();
                    let Ok(SaslStep::Challenge(first)) = auth.step(&mut s, &client.client_first())
                    else {
                        panic!()
                    };
                    spent += t.elapsed();
                    let last = client.client_final(&first).unwrap();
                    let t = std::time::Instant::now();
                    let r = auth.step(&mut s, &last);
                    spent += t.elapsed();
                    assert!(matches!(r, Ok(SaslStep::Done(..))));
                }
                spent
            })
        });
    }
    g.bench_function("API token", |b| {
        b.iter(|| black_box(auth.bearer(&token, None).unwrap()))
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // A JWT is checked once, then remembered: time its first use (a new token each round,
    // made untimed) and its next ones.
    let hs_key = jsonwebtoken::EncodingKey::from_secret(&[7u8; 32]);
    let es_key = ES256
        .with(|k| jsonwebtoken::EncodingKey::from_ec_pem(k.serialize_pem().as_bytes()))
        .unwrap();
    let mut n = 0u64;
    let mut token = |alg: jsonwebtoken::Algorithm, key: &jsonwebtoken::EncodingKey| {
        n += 1;
        let claims = serde_json::json!({"sub": format!("u{n}"), "exp": now + 3600});
        jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, key).unwrap()
    };
    for (name, alg, key) in [
        ("HS256", jsonwebtoken::Algorithm::HS256, &hs_key),
        ("ES256", jsonwebtoken::Algorithm::ES256, &es_key),
    ] {
        g.bench_function(format!("JWT {name}, first use"), |b| {
            b.iter_batched(
                || token(alg, key),
                |t| black_box(auth.bearer(&t, None).unwrap()),
                criterion::BatchSize::SmallInput,
            )
        });
        let t = token(alg, key);
        g.bench_function(format!("JWT {name}, again"), |b| {
            b.iter(|| black_box(auth.bearer(&t, None).unwrap()))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("auth/client");
    g.bench_function("SCRAM-SHA-512 client-final", |b| {
        b.iter_custom(|iters| {
            let mut spent = std::time::Duration::ZERO;
            for _ in 0..iters {
                let mut client = ScramClient::new(ScramHash::Sha512, "alice", PASSWORD);
                let mut s = auth.start("SCRAM-SHA-512", None).unwrap();
                let Ok(SaslStep::Challenge(first)) = auth.step(&mut s, &client.client_first())
                else {
                    panic!()
                };
                let t = std::time::Instant::now();
                black_box(client.client_final(&first).unwrap());
                spent += t.elapsed();
            }
            spent
        })
    });
    g.finish();
}

criterion_group!(benches, logins);
criterion_main!(benches);
