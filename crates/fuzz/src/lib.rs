//! The harness shared by the fuzz property tests in `tests/`: one file per parser of outside
//! input, each fed arbitrary bytes and mutated valid examples.
//!
//! Property tests, not cargo-fuzz: CI runs stable Rust only, and cargo-fuzz needs nightly and
//! a libFuzzer build. `FUZZ_CASES` sets how many inputs each property tries: small by default
//! so `cargo test --workspace` stays fast, large under `make fuzz`.
//!
//! "Never hangs" is checked by a watchdog thread: an input that keeps its parser busy longer
//! than `FUZZ_HANG_SECS` (default 10) is printed and the process aborts, so a hang is a
//! failure with its input, not a CI job that runs into its own timeout.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::Config;

/// Inputs per property when `FUZZ_CASES` is unset: enough to catch a regression, few enough
/// for the debug build of `cargo test --workspace`.
pub const DEFAULT_CASES: u32 = 256;

/// Inputs per property: `FUZZ_CASES`, else [`DEFAULT_CASES`].
pub fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_CASES)
}

/// The proptest configuration of a property: [`cases`] inputs, no regression files written
/// into the source tree (a failure prints its shrunk input; it becomes a named test in the
/// owning crate).
pub fn config() -> Config {
    config_div(1)
}

/// As [`config`], with `1/div` of the cases (at least 16): for properties whose one case costs
/// as much as many of the others (signing keys, files on disk).
pub fn config_div(div: u32) -> Config {
    Config {
        cases: (cases() / div.max(1)).max(16),
        failure_persistence: None,
        ..Config::default()
    }
}

fn hang_limit() -> Duration {
    let secs = std::env::var("FUZZ_HANG_SECS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(10u64);
    Duration::from_secs(secs)
}

struct Running {
    surface: &'static str,
    started: Instant,
    input: Vec<u8>,
}

static RUNNING: Mutex<BTreeMap<u64, Running>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicU64 = AtomicU64::new(0);
static WATCHDOG: Once = Once::new();

fn running() -> std::sync::MutexGuard<'static, BTreeMap<u64, Running>> {
    RUNNING.lock().unwrap_or_else(|p| p.into_inner())
}

/// One input under way; dropping it tells the watchdog the parser returned.
#[derive(Debug)]
#[must_use = "the input is watched only while the guard lives"]
pub struct Watch(u64);

impl Drop for Watch {
    fn drop(&mut self) {
        running().remove(&self.0);
    }
}

/// Watches one call of `surface`'s parser on `input` until the guard is dropped.
pub fn watch(surface: &'static str, input: &[u8]) -> Watch {
    WATCHDOG.call_once(|| {
        let limit = hang_limit();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(250));
            let map = running();
            if let Some(r) = map.values().find(|r| r.started.elapsed() > limit) {
                // A panic here would only end this thread; the stuck one must stop too.
                eprintln!(
                    "HANG: {} busy for more than {limit:?} on {} bytes:\n{:?}\nhex: {}",
                    r.surface,
                    r.input.len(),
                    String::from_utf8_lossy(&r.input),
                    hex_of(&r.input),
                );
                std::process::abort();
            }
        });
    });
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    running().insert(
        id,
        Running {
            surface,
            started: Instant::now(),
            input: input.to_vec(),
        },
    );
    Watch(id)
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One edit of a valid example, as a mutation-based fuzzer makes them. Positions are taken
/// modulo the input's length, so every edit applies to every input.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flip one bit.
    FlipBit(usize, u8),
    /// Overwrite one byte.
    SetByte(usize, u8),
    /// Insert bytes.
    Insert(usize, Vec<u8>),
    /// Insert a token parsers tend to treat specially.
    Token(usize, &'static [u8]),
    /// Delete up to `n` bytes.
    Delete(usize, usize),
    /// Cut the input here.
    Truncate(usize),
    /// Copy up to `n` bytes from one place to another.
    Duplicate(usize, usize, usize),
}

/// Bytes that are syntax somewhere among the parsers: quotes, separators, brackets, NUL,
/// invalid and partial UTF-8, numbers at type boundaries.
pub const TOKENS: &[&[u8]] = &[
    b"\0",
    b"\xff",
    b"\xc3",
    b"\xe2\x80",
    b"\"",
    b"'",
    b"\\",
    b"\n",
    b"\r\n",
    b" ",
    b"\t",
    b"=",
    b":",
    b",",
    b";",
    b"@",
    b"#",
    b"%",
    b"&",
    b"?",
    b"*",
    b"-",
    b"/",
    b"{",
    b"}",
    b"[",
    b"]",
    b"[!",
    b"&a",
    b"*a",
    b"---",
    b"0",
    b"-1",
    b"4294967296",
    b"9223372036854775807",
    b"9223372036854775808",
    b"18446744073709551616",
    b"1e999",
    b"null",
    b"true",
    b"\\u0000",
    b"\\ud800",
    b"%00",
    b"%ff",
];

fn token() -> impl Strategy<Value = &'static [u8]> {
    proptest::sample::select(TOKENS)
}

/// One random [`Mutation`].
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::SetByte(at, b)),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(at, b)| Mutation::Insert(at, b)),
        (any::<usize>(), token()).prop_map(|(at, t)| Mutation::Token(at, t)),
        (any::<usize>(), 1usize..32).prop_map(|(at, n)| Mutation::Delete(at, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<usize>(), 1usize..64)
            .prop_map(|(from, to, n)| Mutation::Duplicate(from, to, n)),
    ]
}

/// One to eight mutations.
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..8)
}

/// Applies `muts` to a copy of `seed`.
pub fn mutate(seed: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in muts {
        let pos = |at: usize, len: usize| at % (len + 1);
        match m {
            Mutation::FlipBit(at, bit) => {
                if !b.is_empty() {
                    let i = at % b.len();
                    b[i] ^= 1 << bit;
                }
            }
            Mutation::SetByte(at, byte) => {
                if !b.is_empty() {
                    let i = at % b.len();
                    b[i] = *byte;
                }
            }
            Mutation::Insert(at, bytes) => {
                let i = pos(*at, b.len());
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::Token(at, t) => {
                let i = pos(*at, b.len());
                b.splice(i..i, t.iter().copied());
            }
            Mutation::Delete(at, n) => {
                let i = pos(*at, b.len());
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            Mutation::Truncate(at) => {
                let i = pos(*at, b.len());
                b.truncate(i);
            }
            Mutation::Duplicate(from, to, n) => {
                let i = pos(*from, b.len());
                let end = (i + n).min(b.len());
                let chunk = b[i..end].to_vec();
                let j = pos(*to, b.len());
                b.splice(j..j, chunk);
            }
        }
    }
    b
}

/// A valid example from `seeds`, then mutated.
pub fn mutated<S>(seeds: S) -> impl Strategy<Value = Vec<u8>>
where
    S: Strategy<Value = Vec<u8>>,
{
    (seeds, mutations()).prop_map(|(seed, muts)| mutate(&seed, &muts))
}

/// Arbitrary bytes up to `max` long.
pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// Arbitrary text up to `max` characters, any Unicode scalar.
pub fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..max).prop_map(|c| c.into_iter().collect())
}

/// Text drawn mostly from `alphabet` (a parser's own syntax), sometimes any character.
pub fn text_of(alphabet: &'static str, max: usize) -> impl Strategy<Value = String> {
    let chars: Vec<char> = alphabet.chars().collect();
    let one = prop_oneof![
        9 => proptest::sample::select(chars),
        1 => any::<char>(),
    ];
    proptest::collection::vec(one, 0..max).prop_map(|c| c.into_iter().collect())
}

/// Bytes as text the way a reader that tolerates bad UTF-8 sees them.
pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_apply_to_any_length() {
        let all = [
            Mutation::FlipBit(7, 3),
            Mutation::SetByte(usize::MAX, 0),
            Mutation::Insert(usize::MAX, vec![1, 2]),
            Mutation::Token(3, b"\0"),
            Mutation::Delete(usize::MAX, 31),
            Mutation::Duplicate(usize::MAX, 5, 63),
            Mutation::Truncate(usize::MAX),
        ];
        for seed in [&b""[..], b"a", b"hello world"] {
            for m in &all {
                let _ = mutate(seed, std::slice::from_ref(m));
            }
        }
        assert_eq!(mutate(b"abc", &[Mutation::Truncate(1)]), b"a");
        assert_eq!(mutate(b"abc", &[Mutation::Delete(1, 1)]), b"ac");
        assert_eq!(mutate(b"abc", &[Mutation::FlipBit(0, 0)]), b"`bc");
    }

    #[test]
    fn cases_default() {
        if std::env::var_os("FUZZ_CASES").is_none() {
            assert_eq!(cases(), DEFAULT_CASES);
        }
        assert!(config_div(1_000_000).cases >= 16);
    }
}
