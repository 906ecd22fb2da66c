//! Dependency planning: start order, and which services are held back and why.

use std::collections::{BTreeMap, BTreeSet};

/// The outcome of planning: an order for the runnable services and reasons for the rest.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Runnable services, each after all its dependencies (ties broken by name).
    pub order: Vec<String>,
    /// Held-back services and why (bad file, unknown dependency, cycle, or a held-back dependency).
    pub blocked: BTreeMap<String, String>,
}

impl Plan {
    /// Stop order: the reverse of the start order.
    pub fn stop_order(&self) -> Vec<String> {
        self.order.iter().rev().cloned().collect()
    }
}

/// Plans `deps` (service → its `after` list); `bad` names services whose file is broken.
pub fn plan(deps: &BTreeMap<String, Vec<String>>, bad: &BTreeMap<String, String>) -> Plan {
    let mut blocked: BTreeMap<String, String> = BTreeMap::new();
    for (name, why) in bad {
        blocked.insert(name.clone(), format!("bad service file: {why}"));
    }
    for (name, after) in deps {
        for d in after {
            if bad.contains_key(d) {
                blocked.insert(
                    name.clone(),
                    format!("dependency {d} has a bad service file"),
                );
            } else if !deps.contains_key(d) {
                blocked.insert(name.clone(), format!("unknown dependency {d}"));
            }
        }
    }
    // Cycle members: every node of a strongly connected component with a cycle.
    for cycle in cycles(deps) {
        let text = cycle.join(", ");
        for n in &cycle {
            blocked
                .entry(n.clone())
                .or_insert_with(|| format!("dependency cycle among {text}"));
        }
    }
    // Kahn's algorithm over the services not yet blocked.
    let mut order = Vec::new();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    loop {
        let ready: Vec<&String> = deps
            .iter()
            .filter(|(n, after)| {
                !done.contains(n.as_str())
                    && !blocked.contains_key(*n)
                    && after.iter().all(|d| done.contains(d.as_str()))
            })
            .map(|(n, _)| n)
            .collect();
        if ready.is_empty() {
            break;
        }
        for n in ready {
            done.insert(n);
            order.push(n.clone());
        }
    }
    // Whatever remains depends (transitively) on something held back.
    for (n, after) in deps {
        if done.contains(n.as_str()) || blocked.contains_key(n) {
            continue;
        }
        let culprit = after
            .iter()
            .find(|d| !done.contains(d.as_str()))
            .cloned()
            .unwrap_or_default();
        blocked.insert(n.clone(), format!("dependency {culprit} is held back"));
    }
    Plan { order, blocked }
}

/// Finds every dependency cycle (Tarjan's SCC), each as the sorted names of its members.
fn cycles(deps: &BTreeMap<String, Vec<String>>) -> Vec<Vec<String>> {
    struct St<'a> {
        deps: &'a BTreeMap<String, Vec<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(st: &mut St<'a>, v: &'a str) {
        st.index.insert(v, st.next);
        st.low.insert(v, st.next);
        st.next += 1;
        st.stack.push(v);
        st.on.insert(v);
        let succ: Vec<&'a str> = st
            .deps
            .get(v)
            .map(|a| a.iter().map(String::as_str).collect())
            .unwrap_or_default();
        for w in succ {
            let Some((w, _)) = st.deps.get_key_value(w) else {
                continue;
            };
            let w = w.as_str();
            if !st.index.contains_key(w) {
                visit(st, w);
                let lw = st.low.get(w).copied().unwrap_or(usize::MAX);
                if let Some(lv) = st.low.get_mut(v) {
                    *lv = (*lv).min(lw);
                }
            } else if st.on.contains(w) {
                let iw = st.index.get(w).copied().unwrap_or(usize::MAX);
                if let Some(lv) = st.low.get_mut(v) {
                    *lv = (*lv).min(iw);
                }
            }
        }
        if st.low.get(v) == st.index.get(v) {
            let mut comp = Vec::new();
            while let Some(w) = st.stack.pop() {
                st.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            let self_loop = st.deps.get(v).is_some_and(|a| a.iter().any(|d| d == v));
            if comp.len() > 1 || self_loop {
                comp.sort();
                st.out.push(comp);
            }
        }
    }
    let mut st = St {
        deps,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in deps.keys() {
        if !st.index.contains_key(v.as_str()) {
            visit(&mut st, v);
        }
    }
    st.out
}
