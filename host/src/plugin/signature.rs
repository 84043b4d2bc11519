//! Signed plugins: Ed25519 signatures embedded in the component, in the WebAssembly
//! tool-conventions signature format that `wasmsign2` implements, verified offline.
//!
//! The signature is a custom section named `signature`, first after the 8-byte header. It signs
//! the SHA-256 of every byte after it: the component as built (with its sample vectors, if
//! bundled before signing). The signed message is `"wasmsig" 01 01 01` followed by that hash
//! (spec version, content type, SHA-256). Several keys may sign the same bytes: their
//! signatures sit side by side in the section.
//!
//! Key files: public `01 ‖ pk[32]` (33 bytes), secret `81 ‖ seed[32] ‖ pk[32]` (65 bytes), as
//! `wasmsign2 keygen` writes them; a public key may also be given as 64 hex characters.
//!
//! A plant's trust policy (`[plants.P.trust]`: `keys`, `min_signatures`) is checked before a
//! candidate is read any further: without enough valid signatures by distinct trusted keys it is
//! refused. A policy whose keys are all unusable refuses everything (fail closed).

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Name of the custom section.
pub const SECTION: &str = "signature";
const DOMAIN: &[u8] = b"wasmsig";
const SPEC_VERSION: u8 = 0x01;
const CONTENT_TYPE: u8 = 0x01;
const SHA256: u8 = 0x01;
const ED25519: u8 = 0x01;

/// Why a component's signatures do not satisfy a policy, or cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "the component carries no signature; sign it with `millrace plugin sign` (or wasmsign2)"
    )]
    Unsigned,
    #[error("the component's signature section is malformed: {0}")]
    Malformed(String),
    #[error("the component does not match its signatures (it was changed after signing)")]
    Tampered,
    #[error("{found} valid signature(s) by trusted keys, {needed} needed (plants.{plant}.trust)")]
    TooFew {
        plant: String,
        found: usize,
        needed: usize,
    },
    #[error("plant {0}'s trust policy names no usable key: every candidate is refused")]
    NoKeys(String),
}

/// A plant's trust policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustPolicy {
    /// The public keys whose signatures count.
    pub keys: Vec<[u8; 32]>,
    /// Distinct trusted keys that must have signed.
    pub min_signatures: usize,
}

/// Read a public key file (wasmsign2's `01 ‖ pk` or 64 hex characters).
pub fn read_public_key(path: &Path) -> Result<[u8; 32], String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read key {}: {e}", path.display()))?;
    if bytes.len() == 33 && bytes[0] == 0x01 {
        return Ok(bytes[1..].try_into().expect("32 bytes"));
    }
    let text = String::from_utf8_lossy(&bytes);
    hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            format!(
                "{} is not an Ed25519 public key (33 bytes 01‖key, or 64 hex characters)",
                path.display()
            )
        })
}

/// Read a secret key file (wasmsign2's `81 ‖ seed ‖ pk`).
pub fn read_secret_key(path: &Path) -> Result<SigningKey, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read key {}: {e}", path.display()))?;
    if bytes.len() != 65 || bytes[0] != 0x81 {
        return Err(format!(
            "{} is not an Ed25519 secret key (65 bytes 81‖seed‖public key)",
            path.display()
        ));
    }
    let pair: [u8; 64] = bytes[1..].try_into().expect("64 bytes");
    SigningKey::from_keypair_bytes(&pair)
        .map_err(|e| format!("{}: the key pair does not match: {e}", path.display()))
}

/// A new key pair from the system's random source: (secret file bytes, public file bytes).
pub fn generate() -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    use std::io::Read;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    let key = SigningKey::from_bytes(&seed);
    let public = key.verifying_key().to_bytes();
    let mut secret = vec![0x81];
    secret.extend_from_slice(&seed);
    secret.extend_from_slice(&public);
    let mut public_file = vec![0x01];
    public_file.extend_from_slice(&public);
    Ok((secret, public_file))
}

/// The 12-byte key id wasmsign2 derives from a public key.
fn key_id(public: &[u8; 32]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(public).expect("HMAC takes any key length");
    mac.update(b"key_id");
    mac.finalize().into_bytes()[..12].to_vec()
}

fn leb(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn read_leb(bytes: &[u8], at: &mut usize) -> Result<usize, SignatureError> {
    let mut n: usize = 0;
    for shift in (0..35).step_by(7) {
        let byte = *bytes
            .get(*at)
            .ok_or_else(|| SignatureError::Malformed("truncated".into()))?;
        *at += 1;
        n |= ((byte & 0x7f) as usize) << shift;
        if byte & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err(SignatureError::Malformed("a number is too long".into()))
}

fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], SignatureError> {
    let end = at
        .checked_add(n)
        .filter(|e| *e <= bytes.len())
        .ok_or_else(|| SignatureError::Malformed("truncated".into()))?;
    let part = &bytes[*at..end];
    *at = end;
    Ok(part)
}

/// One signed hash and the signatures over it: (hash, [(key id, signature)]).
type SignedSet = ([u8; 32], Vec<(Vec<u8>, [u8; 64])>);

/// The component split at its signature section: (the sets, the bytes it covers).
fn split(component: &[u8]) -> Result<(Vec<SignedSet>, &[u8]), SignatureError> {
    if component.len() < 8 || &component[..4] != b"\0asm" {
        return Err(SignatureError::Malformed("not a WebAssembly binary".into()));
    }
    let body = &component[8..];
    let mut at = 0;
    if body.first() != Some(&0) {
        return Ok((Vec::new(), body));
    }
    at += 1;
    let size = read_leb(body, &mut at)?;
    let section_start = at;
    let section = take(body, &mut at, size)?;
    let rest = &body[section_start + size..];
    let mut s = 0;
    let name_len = read_leb(section, &mut s)?;
    if take(section, &mut s, name_len)? != SECTION.as_bytes() {
        // Another custom section comes first: no signature.
        return Ok((Vec::new(), body));
    }
    let header = take(section, &mut s, 3)?;
    if header != [SPEC_VERSION, CONTENT_TYPE, SHA256] {
        return Err(SignatureError::Malformed(format!(
            "version/content type/hash {header:02x?}; only 01 01 01 (SHA-256) is known"
        )));
    }
    let mut sets = Vec::new();
    let n_sets = read_leb(section, &mut s)?;
    for _ in 0..n_sets.min(64) {
        let len = read_leb(section, &mut s)?;
        let set = take(section, &mut s, len)?;
        let mut p = 0;
        let n_hashes = read_leb(set, &mut p)?;
        let mut hashes = Vec::new();
        for _ in 0..n_hashes.min(64) {
            hashes.push(<[u8; 32]>::try_from(take(set, &mut p, 32)?).expect("32 bytes"));
        }
        let n_sigs = read_leb(set, &mut p)?;
        let mut sigs = Vec::new();
        for _ in 0..n_sigs.min(256) {
            let len = read_leb(set, &mut p)?;
            let sig = take(set, &mut p, len)?;
            let mut q = 0;
            let id_len = read_leb(sig, &mut q)?;
            let id = take(sig, &mut q, id_len)?.to_vec();
            let alg = take(sig, &mut q, 1)?[0];
            let sig_len = read_leb(sig, &mut q)?;
            let bytes = take(sig, &mut q, sig_len)?;
            if alg == ED25519 && sig_len == 64 {
                sigs.push((id, bytes.try_into().expect("64 bytes")));
            }
        }
        // This format signs one hash over the whole component (no partial signatures).
        if let [hash] = hashes[..] {
            sets.push((hash, sigs));
        }
    }
    Ok((sets, rest))
}

fn message(hash: &[u8; 32]) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(&[SPEC_VERSION, CONTENT_TYPE, SHA256]);
    m.extend_from_slice(hash);
    m
}

/// `component` with `key`'s signature added (the component's other signatures over the same
/// bytes are kept).
pub fn sign(component: &[u8], key: &SigningKey) -> Result<Vec<u8>, SignatureError> {
    let (sets, covered) = split(component)?;
    let hash: [u8; 32] = Sha256::digest(covered).into();
    let mut sigs: Vec<(Vec<u8>, [u8; 64])> = sets
        .into_iter()
        .filter(|(h, _)| *h == hash)
        .flat_map(|(_, s)| s)
        .collect();
    let public = key.verifying_key().to_bytes();
    let id = key_id(&public);
    sigs.retain(|(i, _)| *i != id);
    sigs.push((id, key.sign(&message(&hash)).to_bytes()));
    let mut set = Vec::new();
    leb(1, &mut set);
    set.extend_from_slice(&hash);
    leb(sigs.len(), &mut set);
    for (id, sig) in &sigs {
        let mut one = Vec::new();
        leb(id.len(), &mut one);
        one.extend_from_slice(id);
        one.push(ED25519);
        leb(64, &mut one);
        one.extend_from_slice(sig);
        leb(one.len(), &mut set);
        set.extend_from_slice(&one);
    }
    let mut payload = vec![SPEC_VERSION, CONTENT_TYPE, SHA256];
    leb(1, &mut payload);
    leb(set.len(), &mut payload);
    payload.extend_from_slice(&set);
    let mut section = Vec::new();
    leb(SECTION.len(), &mut section);
    section.extend_from_slice(SECTION.as_bytes());
    section.extend_from_slice(&payload);
    let mut out = component[..8].to_vec();
    out.push(0);
    leb(section.len(), &mut out);
    out.extend_from_slice(&section);
    out.extend_from_slice(covered);
    Ok(out)
}

/// The public keys among `keys` whose valid signatures `component` carries over its bytes.
pub fn signers(component: &[u8], keys: &[[u8; 32]]) -> Result<Vec<[u8; 32]>, SignatureError> {
    let (sets, covered) = split(component)?;
    if sets.is_empty() {
        return Err(SignatureError::Unsigned);
    }
    let hash: [u8; 32] = Sha256::digest(covered).into();
    let matching: Vec<_> = sets.iter().filter(|(h, _)| *h == hash).collect();
    if matching.is_empty() {
        return Err(SignatureError::Tampered);
    }
    let mut found = Vec::new();
    for key in keys {
        let Ok(verifying) = VerifyingKey::from_bytes(key) else {
            continue;
        };
        let signed = matching.iter().flat_map(|(_, sigs)| sigs).any(|(_, sig)| {
            verifying
                .verify(&message(&hash), &Signature::from_bytes(sig))
                .is_ok()
        });
        if signed && !found.contains(key) {
            found.push(*key);
        }
    }
    Ok(found)
}

/// Whether `component` satisfies `plant`'s `policy`.
pub fn check(component: &[u8], plant: &str, policy: &TrustPolicy) -> Result<(), SignatureError> {
    let usable: Vec<[u8; 32]> = policy
        .keys
        .iter()
        .filter(|k| VerifyingKey::from_bytes(k).is_ok())
        .copied()
        .collect();
    if usable.is_empty() {
        return Err(SignatureError::NoKeys(plant.into()));
    }
    let found = signers(component, &usable)?.len();
    let needed = policy.min_signatures.max(1);
    if found < needed {
        return Err(SignatureError::TooFew {
            plant: plant.into(),
            found,
            needed,
        });
    }
    Ok(())
}

/// Where `millrace plugin keygen --out BASE` writes: `BASE.key` and `BASE.pub`.
pub fn key_files(base: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut name = base.as_os_str().to_owned();
        name.push(ext);
        PathBuf::from(name)
    };
    (with(".key"), with(".pub"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn component() -> Vec<u8> {
        let mut c = b"\0asm\x0d\x00\x01\x00".to_vec();
        // A custom section "x" with a payload, standing in for a component's sections.
        c.extend_from_slice(&[0, 4, 1, b'x', 1, 2]);
        c
    }

    #[test]
    fn signatures_verify_accumulate_and_catch_any_change() {
        let (a, b, c) = (key(1), key(2), key(3));
        let pk = |k: &SigningKey| k.verifying_key().to_bytes();
        let signed = sign(&component(), &a).unwrap();
        assert_eq!(signers(&signed, &[pk(&a), pk(&b)]).unwrap(), vec![pk(&a)]);
        let twice = sign(&signed, &b).unwrap();
        assert_eq!(
            signers(&twice, &[pk(&a), pk(&b), pk(&c)]).unwrap(),
            vec![pk(&a), pk(&b)]
        );
        let policy = |keys: Vec<[u8; 32]>, min| TrustPolicy {
            keys,
            min_signatures: min,
        };
        assert!(check(&twice, "p", &policy(vec![pk(&a), pk(&b)], 2)).is_ok());
        assert_eq!(
            check(&signed, "p", &policy(vec![pk(&a), pk(&b)], 2)),
            Err(SignatureError::TooFew {
                plant: "p".into(),
                found: 1,
                needed: 2
            })
        );
        assert!(matches!(
            check(&signed, "p", &policy(vec![pk(&c)], 1)),
            Err(SignatureError::TooFew { found: 0, .. })
        ));
        assert_eq!(
            check(&component(), "p", &policy(vec![pk(&a)], 1)),
            Err(SignatureError::Unsigned)
        );
        let mut tampered = signed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            check(&tampered, "p", &policy(vec![pk(&a)], 1)),
            Err(SignatureError::Tampered)
        );
        assert_eq!(
            check(&signed, "p", &policy(vec![], 1)),
            Err(SignatureError::NoKeys("p".into()))
        );
        // The covered bytes are the component as given: the signature section comes first.
        assert_eq!(&signed[8..10], &[0, signed[9]]);
        assert_eq!(&signed[signed.len() - 6..], &component()[8..]);
    }

    #[test]
    fn key_files_round_trip_in_the_wasmsign2_layout() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = generate().unwrap();
        assert_eq!((secret.len(), secret[0]), (65, 0x81));
        assert_eq!((public.len(), public[0]), (33, 0x01));
        let (sk_path, pk_path) = key_files(&dir.path().join("release"));
        std::fs::write(&sk_path, &secret).unwrap();
        std::fs::write(&pk_path, &public).unwrap();
        let sk = read_secret_key(&sk_path).unwrap();
        let pk = read_public_key(&pk_path).unwrap();
        assert_eq!(sk.verifying_key().to_bytes(), pk);
        std::fs::write(&pk_path, hex::encode(pk)).unwrap();
        assert_eq!(read_public_key(&pk_path).unwrap(), pk);
    }
}
