//! Property tests of every parser a request from the network reaches: digests, repository
//! names and tags, `ns`, `/v2` paths, `Range` headers, `/blobs` URLs and allow rules, peer
//! authentication headers, `wait=`, swarm bitmaps and status documents. Each must never panic,
//! and what it accepts must be well formed.
//!
//! `cargo test` runs a short pass (2,000 cases each); `make fuzz` runs 1,000,000 cases each
//! (`PEERD_FUZZ_CASES`), in release mode.

use peerd::blobs::parse_blob_url;
use peerd::config::AllowRule;
use peerd::mirror::{parse_path, Route};
use peerd::oci::{parse_ns, validate_repository, validate_tag, Algorithm, Digest};
use peerd::peer::auth::ClusterKey;
use peerd::range::{self, RangeSpec};
use peerd::upstream::policy::AddressPolicy;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

fn config() -> Config {
    let cases = std::env::var("PEERD_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
    // Failures are reported with the shrunk input; no regression files in the tree.
    Config { cases, failure_persistence: Some(Box::new(FileFailurePersistence::Off)), ..Config::default() }
}

/// Arbitrary text with the characters these parsers care about over-represented.
fn texty(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::string::string_regex(&format!(
            "[a-zA-Z0-9:/@._+=,;*?&%#\\[\\]\\- ]{{0,{max}}}"
        ))
        .unwrap(),
        1 => proptest::collection::vec(any::<char>(), 0..max).prop_map(|v| v.into_iter().collect()),
    ]
}

fn hex_digest() -> impl Strategy<Value = String> {
    prop_oneof!["sha256:[0-9a-f]{64}", "sha512:[0-9a-f]{128}", "(sha256|sha512|sha384|md5|)[:+.]?[0-9a-fA-FgG]{0,130}",]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn digests(s in prop_oneof![hex_digest(), texty(140)]) {
        if let Ok(d) = s.parse::<Digest>() {
            // What parses prints back to itself and re-parses to the same digest.
            prop_assert_eq!(d.to_string(), s.clone());
            prop_assert_eq!(s.parse::<Digest>().unwrap(), d.clone());
            let want = match d.algorithm() { Algorithm::Sha256 => 64, Algorithm::Sha512 => 128 };
            prop_assert_eq!(d.hex().len(), want);
        }
    }

    #[test]
    fn names_tags_and_ns(repo in texty(300), tag in texty(140), ns in texty(300)) {
        if validate_repository(&repo).is_ok() {
            prop_assert!(!repo.is_empty() && repo.len() <= 255, "{repo:?}");
            prop_assert!(repo.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)));
        }
        if validate_tag(&tag).is_ok() {
            prop_assert!(!tag.is_empty() && tag.len() <= 128, "{tag:?}");
        }
        if let Ok(r) = parse_ns(Some(&ns), "docker.io") {
            prop_assert!(!r.name().is_empty() && !r.api_host().is_empty());
            prop_assert!(!r.name().contains('/') && !r.name().contains(char::is_whitespace), "{r}");
        }
    }

    #[test]
    fn v2_paths(tail in texty(300), digest in hex_digest()) {
        for path in [format!("/v2/{tail}"), format!("/v2/{tail}/blobs/{digest}"), format!("/v2/{tail}/manifests/{tail}")] {
            match parse_path(&path) {
                Ok(Route::Blob { repo, digest }) => {
                    prop_assert!(validate_repository(&repo).is_ok());
                    prop_assert!(path.ends_with(&digest.to_string()));
                }
                Ok(Route::Manifest { repo, .. }) => prop_assert!(validate_repository(&repo).is_ok()),
                Err(_) => {}
            }
        }
    }

    #[test]
    fn ranges(header in prop_oneof![
        "bytes=[0-9]{0,22}-[0-9]{0,22}(,[0-9]{0,5}-[0-9]{0,5})?",
        "bytes=-[0-9]{0,22}",
        "[a-z]{0,6}=? ?[0-9 ,-]{0,30}",
        texty(60),
    ], size in prop_oneof![Just(0u64), Just(1), Just(u64::MAX), any::<u64>(), 0u64..10_000]) {
        if let Ok(Some(spec)) = range::parse(&header) {
            if let Ok(r) = spec.resolve(size) {
                // A resolved range lies inside the body, whatever the header said.
                prop_assert!(r.start <= r.end && r.end < size, "{header:?} on {size}: {r:?}");
                prop_assert_eq!(r.len(), r.end - r.start + 1);
                let cr = r.content_range(size);
                prop_assert!(cr.starts_with("bytes "));
                if let RangeSpec::Suffix(n) = spec { prop_assert!(n > 0); }
            }
        }
    }

    #[test]
    fn blob_urls_and_allow_rules(url in prop_oneof![
        "(https?|ftp|)(://)?[a-z0-9.@:\\[\\]-]{0,40}(/[a-zA-Z0-9%._?=&-]{0,40}){0,3}",
        texty(200),
    ], query in proptest::option::of("[a-zA-Z0-9%=&._-]{0,60}"), rule in prop_oneof![
        "(https?://)?(\\*\\.)?[a-z0-9.\\[\\]:*/-]{0,30}",
        texty(40),
    ]) {
        let allow: Vec<AllowRule> = AllowRule::parse(&rule).into_iter().collect();
        let policy = AddressPolicy { allow_loopback: false };
        if let Ok(u) = parse_blob_url(&format!("/blobs/{url}"), query.as_deref(), &allow, policy) {
            prop_assert!(policy.check_url(&u).is_ok(), "no refused address passes");
            prop_assert!(matches!(u.scheme(), "http" | "https"));
            prop_assert!(u.host_str().is_some() && u.username().is_empty() && u.password().is_none());
            prop_assert!(!allow.is_empty(), "nothing passes an empty allow list");
        }
    }

    #[test]
    fn peer_authentication_headers(
        method in texty(10), target in texty(200), ts in proptest::option::of(texty(25)),
        nonce in proptest::option::of(texty(70)), node in proptest::option::of(texty(100)),
        sig in proptest::option::of(prop_oneof!["[0-9a-f]{64}", texty(80)]), now in any::<u64>(),
        range in texty(40),
    ) {
        let key = ClusterKey::derive(b"fuzzing-cluster-secret");
        // Random headers are never accepted (and never panic, whatever the clock says).
        prop_assert!(key
            .verify_request(&method, &target, "", ts.as_deref(), nonce.as_deref(), node.as_deref(), sig.as_deref(), now)
            .is_err());
        // Signed ones are, for any target and node.
        let (nonce, node) = (nonce.unwrap_or_default(), node.unwrap_or_default());
        let t = now / 2;
        let good = key.sign_request(&method, &target, &range, t, &nonce, &node);
        prop_assert!(key.verify_request(&method, &target, &range, Some(&t.to_string()), Some(&nonce), Some(&node), Some(&good), t).is_ok());
        // The same signature with another Range is refused.
        let other = format!("{range}0");
        prop_assert!(key.verify_request(&method, &target, &other, Some(&t.to_string()), Some(&nonce), Some(&node), Some(&good), t).is_err());
        let _ = key.verify_response(&nonce, 200, &target, &method, sig.as_deref());
    }

    #[test]
    fn wait_parameter(query in "[a-z=&%0-9.+-]{0,80}", cap_ms in 0u64..100_000) {
        let req = actix_web::test::TestRequest::get().uri(&format!("/swarm/x?{query}")).to_http_request();
        let cap = std::time::Duration::from_millis(cap_ms);
        prop_assert!(peerd::http::peer::wait_param(&req, cap) <= cap);
    }

    #[test]
    fn swarm_bitmaps_and_status(map in texty(80), len in 0u64..2_000, doc in texty(300)) {
        prop_assert_eq!(peerd::swarm::unbitmap(&map, len).len() as u64, len);
        let bits: Vec<bool> = peerd::swarm::unbitmap(&map, len);
        prop_assert_eq!(peerd::swarm::unbitmap(&peerd::swarm::bitmap(bits.iter().copied()), len), bits);
        let _ = serde_json::from_str::<peerd::swarm::StatusDoc>(&doc);
    }
}
