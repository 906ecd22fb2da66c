//! Module index files (`kmod::ModuleIndex::parse` over modules.alias, modules.dep and
//! modules.builtin), the modules-load list (`kmod::parse_load_list`) and the alias matcher
//! (`kmod::glob_match`), with device modaliases as the text: PID 1 runs all of them at boot.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use fuzz::{config, config_div, lossy, mutate, mutations, text, text_of, watch};
use kmod::{glob_match, module_name, normalize, parse_load_list, ModuleIndex};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Tok {
    Star,
    Any,
    Lit(u8),
    Class(Vec<(u8, u8)>, bool),
}

/// A bracket class as fnmatch reads it: `!` or `^` negates, a `]` right after the opening
/// (or the negation) is a member, `a-z` is a range unless `]` ends it; `None` when unclosed.
/// Returns the class token and the index after its `]`.
fn ref_class(p: &[u8], start: usize) -> Option<(Tok, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let first = i;
    let mut ranges = Vec::new();
    loop {
        let c = *p.get(i)?;
        if c == b']' && i > first {
            return Some((Tok::Class(ranges, negate), i + 1));
        }
        match (p.get(i + 1), p.get(i + 2)) {
            (Some(b'-'), Some(&hi)) if hi != b']' => {
                ranges.push((c, hi));
                i += 3;
            }
            _ => {
                ranges.push((c, c));
                i += 1;
            }
        }
    }
}

fn ref_tokens(p: &[u8]) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&c) = p.get(i) {
        match c {
            b'*' => out.push(Tok::Star),
            b'?' => out.push(Tok::Any),
            b'[' => {
                if let Some((class, end)) = ref_class(p, i) {
                    out.push(class);
                    i = end;
                    continue;
                }
                out.push(Tok::Lit(b'['));
            }
            c => out.push(Tok::Lit(c)),
        }
        i += 1;
    }
    out
}

/// The matcher written the slow, obvious way (dynamic programming over pattern tokens and
/// text), to check the fast one against.
fn ref_match(pattern: &str, text: &str) -> bool {
    let toks = ref_tokens(pattern.as_bytes());
    let t = text.as_bytes();
    // row[j]: tokens[i..] match t[j..]
    let mut row = vec![false; t.len() + 1];
    row[t.len()] = true;
    for tok in toks.iter().rev() {
        let mut next = vec![false; t.len() + 1];
        for j in (0..=t.len()).rev() {
            next[j] = match tok {
                Tok::Star => row[j] || (j < t.len() && next[j + 1]),
                _ if j == t.len() => false,
                Tok::Any => row[j + 1],
                Tok::Lit(c) => t[j] == *c && row[j + 1],
                Tok::Class(ranges, negate) => {
                    let hit = ranges.iter().any(|&(lo, hi)| lo <= t[j] && t[j] <= hi);
                    hit != *negate && row[j + 1]
                }
            };
        }
        row = next;
    }
    row[0]
}

fn check_glob(pattern: &str, text: &str) -> Result<bool, TestCaseError> {
    let input = format!("{pattern}\n{text}");
    let _w = watch("kmod::glob_match", input.as_bytes());
    let got = glob_match(pattern, text);
    prop_assert_eq!(
        got,
        ref_match(pattern, text),
        "pattern {:?} text {:?}",
        pattern,
        text
    );
    Ok(got)
}

/// Glob syntax, modalias characters and the characters fnmatch treats specially.
const GLOB: &str = "*?[]!^-azAZ09:";

/// Pieces of patterns that make a backtracking matcher work hard.
fn hostile_pattern() -> impl Strategy<Value = String> {
    let piece = proptest::sample::select(vec![
        "*", "*", "?", "[", "[", "[!", "]", "a", "a", "[a-z]", "[]]", "-", "[!a]",
    ]);
    proptest::collection::vec(piece, 0..400).prop_map(|p| p.concat())
}

fn modalias() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00".to_string()),
        Just("virtio:d00000001v00001AF4".to_string()),
        Just("acpi:PNP0C0C:".to_string()),
        Just("usb:v1D6Bp0002d0515dc09dsc00dp01ic09isc00ip00in00".to_string()),
        "(pci|usb|virtio|acpi|platform|of):[a-zA-Z0-9*:_-]{0,60}",
        text_of(GLOB, 80),
    ]
}

/// A module index that looks like a kernel's: aliases with globs, dependencies, built-ins.
fn index_texts() -> impl Strategy<Value = (String, String, String)> {
    let name = proptest::sample::select(vec![
        "virtio_net",
        "virtio-pci",
        "e1000e",
        "snd-hda-intel",
        "btrfs",
        "failover",
        "ahci",
        "nvme",
        "",
    ]);
    let alias_line = (modalias(), name.clone()).prop_map(|(p, m)| format!("alias {p} {m}"));
    let dep_line =
        (name.clone(), proptest::collection::vec(name.clone(), 0..4)).prop_map(|(m, deps)| {
            let deps: Vec<String> = deps
                .iter()
                .map(|d| format!("kernel/drivers/{d}.ko"))
                .collect();
            format!("kernel/drivers/x/{m}.ko.xz: {}", deps.join(" "))
        });
    let builtin_line = name.prop_map(|m| format!("kernel/drivers/{m}.ko"));
    let lines = |s: BoxedStrategy<String>| {
        proptest::collection::vec(
            prop_oneof![
                8 => s,
                1 => Just("# comment".to_string()),
                1 => text_of("alias :/.ko-_\t*", 30),
            ],
            0..12,
        )
        .prop_map(|l| l.join("\n"))
    };
    (
        lines(alias_line.boxed()),
        lines(dep_line.boxed()),
        lines(builtin_line.boxed()),
    )
}

/// What the index promises: aliases resolve to normalised names exactly when the reference
/// matcher says so, and a load order ends with the module asked for.
fn check_index(
    alias: &str,
    dep: &str,
    builtin: &str,
    aliases: &[String],
) -> Result<(), TestCaseError> {
    let input = format!("{alias}\n--\n{dep}\n--\n{builtin}");
    let _w = watch("kmod::ModuleIndex::parse", input.as_bytes());
    let idx = ModuleIndex::parse(alias, dep, builtin);
    for a in aliases {
        let got = idx.resolve(a);
        let want: BTreeSet<String> = alias
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.len() >= 3 && w[0] == "alias" && ref_match(w[1], a)).then(|| normalize(w[2]))
            })
            .collect();
        prop_assert_eq!(&got, &want, "modalias {:?}", a);
        for m in &got {
            prop_assert!(!m.contains('-'));
            let order = idx.load_order(m);
            if idx.is_builtin(m) {
                prop_assert!(order.is_empty());
            }
            if let Some(last) = order.last() {
                prop_assert_eq!(module_name(last), m.clone());
            }
        }
    }
    Ok(())
}

fn check_load_list(text: &str) -> Result<(), TestCaseError> {
    let _w = watch("kmod::parse_load_list", text.as_bytes());
    for m in parse_load_list(text) {
        prop_assert!(!m.is_empty() && m.len() <= 64, "{:?}", m);
        prop_assert!(!m.contains(['/', '#', '-', '\n']), "{:?}", m);
        prop_assert_eq!(m.trim(), m.as_str());
    }
    Ok(())
}

fn shipped_load_list() -> Result<String, TestCaseError> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../initramfs/etc/gridos/modules-load");
    std::fs::read_to_string(&path)
        .map_err(|e| TestCaseError::fail(format!("{}: {e}", path.display())))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn glob_agrees_with_reference(p in text_of(GLOB, 24), t in text_of(GLOB, 24)) {
        check_glob(&p, &t)?;
    }

    #[test]
    fn glob_arbitrary_text(p in text(32), t in text(32)) {
        check_glob(&p, &t)?;
    }

    /// A pattern matches itself with its specials taken literally only when it has none.
    #[test]
    fn glob_real_aliases(a in modalias()) {
        let plain: String = a.chars().filter(|c| !"*?[".contains(*c)).collect();
        prop_assert!(check_glob(&plain, &plain)?);
        check_glob(&a, &plain)?;
    }

    /// Patterns and texts built to make a backtracking matcher explode; the watchdog fails
    /// the run if one call takes seconds.
    #[test]
    fn glob_hostile_patterns(p in hostile_pattern(), t in text_of("a[]-!", 1024)) {
        let input = format!("{p}\n{t}");
        let _w = watch("kmod::glob_match (hostile)", input.as_bytes());
        let started = std::time::Instant::now();
        let _ = glob_match(&p, &t);
        prop_assert!(started.elapsed() < std::time::Duration::from_secs(2),
            "{:?} for {} pattern bytes, {} text bytes", started.elapsed(), p.len(), t.len());
    }

    #[test]
    fn index_arbitrary_text(a in text(512), d in text(512), b in text(256), m in proptest::collection::vec(text(40), 0..4)) {
        check_index(&a, &d, &b, &m)?;
    }

    #[test]
    fn index_kernel_shaped(texts in index_texts(), m in proptest::collection::vec(modalias(), 0..4)) {
        let (a, d, b) = texts;
        check_index(&a, &d, &b, &m)?;
    }

    #[test]
    fn index_mutated(texts in index_texts(), ma in mutations(), md in mutations(), m in proptest::collection::vec(modalias(), 0..4)) {
        let (a, d, b) = texts;
        let a = lossy(&mutate(a.as_bytes(), &ma));
        let d = lossy(&mutate(d.as_bytes(), &md));
        check_index(&a, &d, &b, &m)?;
    }

    #[test]
    fn load_list_arbitrary(t in text(512)) {
        check_load_list(&t)?;
    }

    #[test]
    fn load_list_mutated(muts in mutations(), extra in text_of("abc-_/# \n\t", 80)) {
        let mut seed = shipped_load_list()?;
        seed.push_str(&extra);
        check_load_list(&lossy(&mutate(seed.as_bytes(), &muts)))?;
    }

    #[test]
    fn module_names(p in prop_oneof![text_of("kernel/drivers-_.kozstx", 60), text(40)]) {
        let _w = watch("kmod::module_name", p.as_bytes());
        let n = module_name(&p);
        prop_assert!(!n.contains('/') && !n.contains('-'), "{:?}", n);
    }
}

proptest! {
    // Each case is up to a 4 KiB modalias (a sysfs page) against a 2 KiB pattern.
    #![proptest_config(config_div(8))]

    /// The shapes that cost a backtracking matcher most: a star, a long run of one piece, a
    /// last byte that fails, against a longer text of what the run matches.
    #[test]
    fn glob_hostile_shapes(
        (piece, text_piece) in proptest::sample::select(vec![
            ("[", "["), ("[!", "[!"), ("?[", "a["), ("*[", "["), ("[a", "[a"),
            ("]", "]"), ("*a", "a"), ("[]]", "]"), ("[!]", "[!]"), ("?", "a"),
        ]),
        run in 0usize..2048,
        len in 0usize..4096,
    ) {
        let p = format!("*{}x", piece.repeat(run));
        let t: String = text_piece.repeat(len).chars().take(len).collect();
        let input = format!("{p}\n{t}");
        let _w = watch("kmod::glob_match (hostile shapes)", input.as_bytes());
        let started = std::time::Instant::now();
        let _ = glob_match(&p, &t);
        prop_assert!(started.elapsed() < std::time::Duration::from_secs(2),
            "{:?} for {} pattern bytes, {} text bytes", started.elapsed(), p.len(), t.len());
    }
}
