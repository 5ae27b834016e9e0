//! Filters (`where=`, a CEL expression) and projections (`fields=`) on
//! record fields, and the mandatory filters a token's `herald.where` claim
//! adds.
//!
//! Each distinct expression is compiled once per node (the cache is keyed
//! by its text) and evaluated at most once per record: the verdict is kept
//! with the record ([`crate::sse::Encoded`]), so every subscription shape
//! that uses the expression, on the live fan-out, a replay or a catch-up
//! pass, shares it. A projection is applied once per record and shared the
//! same way. Evaluation errors (a missing field, a type mismatch) are "does
//! not match", counted in `herald_filter_errors_total`.
//!
//! CEL through the `cel` crate (cel-rust): the language Kubernetes, Envoy
//! and Confluent's data-quality rules use; its `matches()` uses the `regex`
//! crate, which does not backtrack. What the crate does not bound, a
//! pre-scan does: expression length, nesting, and the number of
//! comprehensions (`all`, `exists`, `map`...), whose cost multiplies.

mod projection;
pub mod vars;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use dashmap::DashMap;
use prometheus::IntCounter;

use crate::metrics::Metrics;
pub use projection::Projection;
pub use vars::RecordVars;

/// Bounds on what a client (or a token) may write.
#[derive(Debug, Clone, Copy)]
pub struct FilterLimits {
    /// Bytes of one `where=` expression.
    pub max_bytes: usize,
    /// Nesting of brackets and chains of unary operators.
    pub max_depth: usize,
    /// Comprehension macros (`all`, `exists`, `exists_one`, `map`, `filter`) in one expression.
    pub max_comprehensions: usize,
    /// Distinct expressions and projections a node keeps in use: each costs
    /// an evaluation per record, so this bounds what clients can make the
    /// ingest thread do.
    pub max_distinct: usize,
}

impl Default for FilterLimits {
    fn default() -> Self {
        FilterLimits {
            max_bytes: 2048,
            max_depth: 32,
            max_comprehensions: 2,
            max_distinct: 10_000,
        }
    }
}

/// Why an expression or a field list is refused: said so the caller can fix it.
#[derive(Debug, Clone, Default, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct FilterError(pub String);

/// A compiled `where=` expression.
pub struct Expr {
    /// Unique on this node while the expression is in use (verdict caches key on it).
    pub id: u64,
    pub text: String,
    program: cel::Program,
    errors: IntCounter,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expr").field("text", &self.text).finish()
    }
}

thread_local! {
    /// CEL's standard functions, built once per thread (a context with them
    /// is a large table); each evaluation adds its variables in a child scope.
    static ROOT: cel::Context<'static, 'static> = cel::Context::default();
}

impl Expr {
    /// Whether `vars` passes; an error is "no", and counted.
    pub fn eval(&self, vars: &RecordVars) -> bool {
        let result = ROOT.with(|root| {
            let root: &cel::Context<'_, '_> = root;
            let mut ctx = root.new_inner_scope();
            ctx.set_variable_resolver(vars);
            self.program.execute(&ctx)
        });
        match result {
            Ok(cel::Value::Bool(b)) => b,
            Ok(_) | Err(_) => {
                self.errors.inc();
                false
            }
        }
    }
}

/// A mandatory or requested filter, for records of one topic or all.
#[derive(Debug, Clone)]
pub struct Check {
    /// Only records of this topic are checked (a claim's filter for one topic pattern).
    pub topic: Option<Arc<str>>,
    pub expr: Arc<Expr>,
}

/// What a subscription keeps of what its selectors take.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Every applicable check must pass.
    pub checks: Vec<Check>,
    pub projection: Option<Arc<Projection>>,
}

/// The node's compiled expressions and projections, by text.
pub struct Filters {
    exprs: DashMap<String, Weak<Expr>>,
    projections: DashMap<String, Weak<Projection>>,
    next_id: AtomicU64,
    limits: FilterLimits,
    errors: IntCounter,
}

impl Filters {
    pub fn new(limits: FilterLimits, metrics: &Metrics) -> Filters {
        Filters {
            exprs: DashMap::new(),
            projections: DashMap::new(),
            next_id: AtomicU64::new(1),
            limits,
            errors: metrics.filter_errors.clone(),
        }
    }

    /// The compiled expression for `text`, compiled now if no live
    /// subscription uses it yet.
    pub fn expr(&self, text: &str) -> Result<Arc<Expr>, FilterError> {
        if let Some(e) = self.exprs.get(text).and_then(|w| w.upgrade()) {
            return Ok(e);
        }
        prescan(text, self.limits)?;
        let program = cel::Program::compile(text)
            .map_err(|e| FilterError(format!("where= does not parse: {e}")))?;
        let expr = Arc::new(Expr {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            text: text.to_owned(),
            program,
            errors: self.errors.clone(),
        });
        // Another request may have compiled the same text meanwhile: keep one.
        let mut slot = self.exprs.entry(text.to_owned()).or_default();
        if let Some(existing) = slot.upgrade() {
            return Ok(existing);
        }
        *slot = Arc::downgrade(&expr);
        drop(slot);
        self.exprs.retain(|_, w| w.strong_count() > 0);
        Ok(expr)
    }

    /// The projection for a `fields=` list.
    pub fn projection(&self, text: &str) -> Result<Arc<Projection>, FilterError> {
        let parsed = Projection::parse(text)?;
        let key = parsed.canonical().to_owned();
        let mut slot = self.projections.entry(key).or_default();
        if let Some(existing) = slot.upgrade() {
            return Ok(existing);
        }
        let projection = Arc::new(parsed.with_id(self.next_id.fetch_add(1, Ordering::Relaxed)));
        *slot = Arc::downgrade(&projection);
        drop(slot);
        self.projections.retain(|_, w| w.strong_count() > 0);
        Ok(projection)
    }

    /// Distinct expressions and projections in use.
    pub fn in_use(&self) -> usize {
        let exprs = self.exprs.iter().filter(|w| w.strong_count() > 0).count();
        exprs
            + self
                .projections
                .iter()
                .filter(|w| w.strong_count() > 0)
                .count()
    }

    fn known(&self, text: &str, projection: bool) -> bool {
        if projection {
            Projection::parse(text).is_ok_and(|p| {
                self.projections
                    .get(p.canonical())
                    .is_some_and(|w| w.strong_count() > 0)
            })
        } else {
            self.exprs.get(text).is_some_and(|w| w.strong_count() > 0)
        }
    }

    /// Whether a stream may use these (expression text, or with `true` a
    /// field list): those not in use yet must fit in what the node has left.
    pub fn admits(&self, items: &[(&str, bool)]) -> bool {
        let new = items.iter().filter(|(t, p)| !self.known(t, *p)).count();
        new == 0 || self.in_use().saturating_add(new) <= self.limits.max_distinct
    }

    pub fn max_distinct(&self) -> usize {
        self.limits.max_distinct
    }
}

/// Refuses what the CEL parser and interpreter would take too far: too
/// long, nested too deep, too many comprehensions.
fn prescan(text: &str, limits: FilterLimits) -> Result<(), FilterError> {
    if text.trim().is_empty() {
        return Err(FilterError("where= is empty".into()));
    }
    if text.len() > limits.max_bytes {
        return Err(FilterError(format!(
            "where= is {} bytes; the limit is {}",
            text.len(),
            limits.max_bytes
        )));
    }
    let bytes = text.as_bytes();
    let (mut depth, mut unary, mut comprehensions) = (0usize, 0usize, 0usize);
    // Bracket depths of the comprehensions open here: one inside another
    // costs the product of their lists' sizes, per record.
    let mut open_comprehensions: Vec<usize> = Vec::new();
    let mut comprehension_next = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'"' | b'\'' => {
                // Skip the literal (escapes included); an unterminated one
                // is the parser's to report.
                i += 1;
                while i < bytes.len() && bytes[i] != b {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                unary = 0;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if b == b'(' && comprehension_next {
                    comprehension_next = false;
                    if !open_comprehensions.is_empty() {
                        return Err(FilterError(format!(
                            "where= nests a comprehension inside another at byte {i} (its cost would multiply per record)"
                        )));
                    }
                    open_comprehensions.push(depth);
                }
                if depth > limits.max_depth {
                    return Err(FilterError(format!(
                        "where= nests deeper than {} at byte {i}",
                        limits.max_depth
                    )));
                }
            }
            b')' | b']' | b'}' => {
                if open_comprehensions.last() == Some(&depth) {
                    open_comprehensions.pop();
                }
                depth = depth.saturating_sub(1);
            }
            b'!' | b'-' if bytes.get(i + 1) != Some(&b'=') => {
                unary += 1;
                if unary > limits.max_depth {
                    return Err(FilterError(format!(
                        "where= chains more than {} unary operators at byte {i}",
                        limits.max_depth
                    )));
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => unary = 0,
        }
        if b == b'.' {
            let rest = &text[i + 1..];
            let name_end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..name_end];
            if matches!(name, "all" | "exists" | "exists_one" | "map" | "filter")
                && rest[name_end..].trim_start().starts_with('(')
            {
                comprehensions += 1;
                comprehension_next = true;
                if comprehensions > limits.max_comprehensions {
                    return Err(FilterError(format!(
                        "where= has more than {} comprehensions (all, exists, exists_one, map, filter)",
                        limits.max_comprehensions
                    )));
                }
            }
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters() -> Filters {
        Filters::new(FilterLimits::default(), &Metrics::new())
    }

    #[test]
    fn one_compilation_per_distinct_text() {
        let f = filters();
        let a = f.expr("value.n > 1").unwrap_or_else(|e| panic!("{e}"));
        let b = f.expr("value.n > 1").unwrap_or_else(|e| panic!("{e}"));
        assert!(Arc::ptr_eq(&a, &b));
        let c = f.expr("value.n > 2").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a.id, c.id);
        drop((a, b));
        let again = f.expr("value.n > 1").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(again.id, c.id);
    }

    #[test]
    fn a_node_keeps_a_bounded_number_of_distinct_filters() {
        let f = Filters::new(
            FilterLimits {
                max_distinct: 2,
                ..FilterLimits::default()
            },
            &Metrics::new(),
        );
        let a = f.expr("value.n > 1").unwrap_or_else(|e| panic!("{e}"));
        let p = f.projection("x,y").unwrap_or_else(|e| panic!("{e}"));
        assert!(!f.admits(&[("value.n > 2", false)]), "full");
        assert!(!f.admits(&[("z", true)]), "full");
        assert!(
            f.admits(&[("value.n > 1", false), ("y, x", true)]),
            "those in use are admitted"
        );
        drop(a);
        assert!(
            f.admits(&[("value.n > 2", false)]),
            "room again once unused"
        );
        assert!(
            !f.admits(&[("value.n > 2", false), ("z", true)]),
            "two new, room for one"
        );
        drop(p);
    }

    #[test]
    fn hostile_expressions_are_refused_before_parsing() {
        let f = filters();
        let deep = format!("{}true{}", "(".repeat(40), ")".repeat(40));
        assert!(f.expr(&deep).is_err_and(|e| e.0.contains("deeper")));
        assert!(f.expr(&format!("{}true", "!".repeat(40))).is_err());
        assert!(f
            .expr(&"1 + ".repeat(1000))
            .is_err_and(|e| e.0.contains("bytes")));
        let three = "value.a.all(x, x > 0) && value.b.all(y, y > 0) && value.c.exists(z, true)";
        assert!(f.expr(three).is_err_and(|e| e.0.contains("comprehensions")));
        let nested = "value.a.all(x, value.b.exists(y, y == x))";
        assert!(
            f.expr(nested)
                .is_err_and(|e| e.0.contains("inside another")),
            "O(n²) per record"
        );
        // Brackets inside strings do not count.
        assert!(f.expr(&format!("value.s == '{}'", "(".repeat(40))).is_ok());
        assert!(f
            .expr("value.a.all(x, x > 0) && value.b.exists(y, y == 1)")
            .is_ok());
        assert!(f.expr("a != -1").is_ok());
        let err = f.expr("value.n >").err().unwrap_or_default();
        assert!(err.0.contains("does not parse"), "{err}");
        assert!(f.expr("  ").is_err());
    }
}
