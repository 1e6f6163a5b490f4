//! Kubernetes label selectors (`metav1.LabelSelector`), validated once and
//! matched many times.
//!
//! Semantics (apimachinery `LabelSelectorAsSelector`): `matchLabels` and
//! every `matchExpressions` requirement are ANDed; an empty selector matches
//! everything. `In` needs the key present with one of the values; `NotIn`
//! matches when the key is absent or its value is not listed; `Exists` /
//! `DoesNotExist` test the key only. Validation follows the API server:
//! `In`/`NotIn` need at least one value, `Exists`/`DoesNotExist` must have
//! none, other operators are errors.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// Why a selector is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("matchExpressions[{index}] (key {key:?}): unknown operator {operator:?}")]
    UnknownOperator {
        index: usize,
        key: String,
        operator: String,
    },
    #[error(
        "matchExpressions[{index}] (key {key:?}): operator {operator} needs at least one value"
    )]
    MissingValues {
        index: usize,
        key: String,
        operator: &'static str,
    },
    #[error("matchExpressions[{index}] (key {key:?}): operator {operator} takes no values")]
    UnexpectedValues {
        index: usize,
        key: String,
        operator: &'static str,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Requirement {
    Equals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }

    fn describe(&self) -> String {
        match self {
            Requirement::Equals(k, v) => format!("{k}={v}"),
            Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
            Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
            Requirement::Exists(k) => k.clone(),
            Requirement::DoesNotExist(k) => format!("!{k}"),
        }
    }
}

/// A validated selector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Validate a Kubernetes selector.
    pub fn parse(sel: &LabelSelector) -> Result<Self, SelectorError> {
        let mut requirements: Vec<Requirement> = sel
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| Requirement::Equals(k.clone(), v.clone()))
            .collect();
        for (index, e) in sel.match_expressions.iter().flatten().enumerate() {
            let values = e.values.clone().unwrap_or_default();
            let need_values = |operator: &'static str| {
                if values.is_empty() {
                    Err(SelectorError::MissingValues {
                        index,
                        key: e.key.clone(),
                        operator,
                    })
                } else {
                    Ok(())
                }
            };
            let no_values = |operator: &'static str| {
                if values.is_empty() {
                    Ok(())
                } else {
                    Err(SelectorError::UnexpectedValues {
                        index,
                        key: e.key.clone(),
                        operator,
                    })
                }
            };
            let req = match e.operator.as_str() {
                "In" => {
                    need_values("In")?;
                    Requirement::In(e.key.clone(), values)
                }
                "NotIn" => {
                    need_values("NotIn")?;
                    Requirement::NotIn(e.key.clone(), values)
                }
                "Exists" => {
                    no_values("Exists")?;
                    Requirement::Exists(e.key.clone())
                }
                "DoesNotExist" => {
                    no_values("DoesNotExist")?;
                    Requirement::DoesNotExist(e.key.clone())
                }
                other => {
                    return Err(SelectorError::UnknownOperator {
                        index,
                        key: e.key.clone(),
                        operator: other.to_string(),
                    })
                }
            };
            requirements.push(req);
        }
        Ok(Selector { requirements })
    }

    /// True when `labels` satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// True for `{}`: everything.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// kubectl-like text (`app=db,tier in (a,b)`), `<all>` for `{}`.
    pub fn describe(&self) -> String {
        if self.requirements.is_empty() {
            return "<all>".to_string();
        }
        self.requirements
            .iter()
            .map(Requirement::describe)
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn sel(ml: &[(&str, &str)], me: Vec<LabelSelectorRequirement>) -> Selector {
        Selector::parse(&LabelSelector {
            match_labels: (!ml.is_empty()).then(|| labels(ml)),
            match_expressions: (!me.is_empty()).then_some(me),
        })
        .unwrap_or_else(|e| panic!("valid selector rejected: {e}"))
    }

    #[test]
    fn operators() {
        let l = labels(&[("app", "db"), ("tier", "back")]);
        assert!(sel(&[], vec![]).matches(&l));
        assert!(sel(&[("app", "db")], vec![]).matches(&l));
        assert!(!sel(&[("app", "web")], vec![]).matches(&l));
        assert!(sel(&[], vec![expr("tier", "In", &["front", "back"])]).matches(&l));
        assert!(!sel(&[], vec![expr("zone", "In", &["a"])]).matches(&l));
        assert!(sel(&[], vec![expr("zone", "NotIn", &["a"])]).matches(&l));
        assert!(!sel(&[], vec![expr("app", "NotIn", &["db"])]).matches(&l));
        assert!(sel(&[], vec![expr("app", "Exists", &[])]).matches(&l));
        assert!(!sel(&[], vec![expr("app", "DoesNotExist", &[])]).matches(&l));
        // AND of matchLabels and expressions.
        assert!(!sel(&[("app", "db")], vec![expr("tier", "In", &["front"])]).matches(&l));
    }

    #[test]
    fn invalid_selectors() {
        let bad = |e: LabelSelectorRequirement| {
            Selector::parse(&LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![e]),
            })
        };
        assert!(matches!(
            bad(expr("a", "in", &["x"])),
            Err(SelectorError::UnknownOperator { .. })
        ));
        assert!(matches!(
            bad(expr("a", "In", &[])),
            Err(SelectorError::MissingValues { .. })
        ));
        assert!(matches!(
            bad(expr("a", "Exists", &["x"])),
            Err(SelectorError::UnexpectedValues { .. })
        ));
    }
}
