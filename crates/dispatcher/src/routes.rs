//! Which revision a question goes to (issue 5): by its recipient's tag
//! (`namespace/name:<tag>`, blue/green), else by the traffic split, else
//! the serving revision.
//!
//! The serving revision runs in the service's main worker; every other
//! revision a tag or a split routes to runs in a worker of its own (a
//! lane), with the service's scaling settings. The split is decided by a
//! hash of the question uuid, so a redelivered or retried question goes
//! to the same revision, and over many questions the shares follow the
//! percentages within binomial noise.

use std::collections::BTreeMap;

/// The tag that always names the serving revision (stock Octue askers must
/// name a tag; they cannot know the serving revision's name in advance).
pub const LATEST_TAG: &str = "latest";

/// A service's routing as the dispatcher applies it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    /// `tag` → revision name.
    pub tags: BTreeMap<String, String>,
    /// Revision name and percentage of untagged questions; empty: all to
    /// the serving revision.
    pub traffic: Vec<(String, u32)>,
}

impl Routes {
    /// Every revision this routing may send a question to, besides `serving`.
    pub fn other_revisions(&self, serving: Option<&str>) -> Vec<String> {
        let mut out: Vec<String> = self
            .tags
            .values()
            .chain(self.traffic.iter().map(|(r, _)| r))
            .filter(|r| Some(r.as_str()) != serving)
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Where a question goes: `Ok(None)` to the serving revision, `Ok(Some(r))`
/// to revision `r`, `Err` when its tag names no revision of the service.
pub fn choose(
    tag: Option<&str>,
    serving: Option<&str>,
    routes: &Routes,
    question_uuid: &str,
) -> Result<Option<String>, String> {
    let to = |revision: &str| (Some(revision) != serving).then(|| revision.to_owned());
    match tag {
        Some(tag) if tag != LATEST_TAG && Some(tag) != serving => {
            if let Some(revision) = routes.tags.get(tag) {
                return Ok(to(revision));
            }
            if routes.traffic.iter().any(|(r, _)| r == tag) {
                return Ok(to(tag));
            }
            let known: Vec<&str> = routes
                .tags
                .keys()
                .map(String::as_str)
                .chain(serving)
                .collect();
            Err(format!(
                "has no revision tagged `{tag}`{}",
                if known.is_empty() {
                    String::new()
                } else {
                    format!(" (its tags: {})", known.join(", "))
                }
            ))
        }
        _ => {
            let total: u32 = routes.traffic.iter().map(|(_, p)| p).sum();
            if total == 0 {
                return Ok(None);
            }
            let mut roll = bucket(question_uuid) % total;
            for (revision, percent) in &routes.traffic {
                if roll < *percent {
                    return Ok(to(revision));
                }
                roll -= percent;
            }
            Ok(None)
        }
    }
}

/// A stable number for a question (FNV-1a of its uuid).
fn bucket(question_uuid: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in question_uuid.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        Routes {
            tags: [("green".to_owned(), "svc-00002".to_owned())].into(),
            traffic: Vec::new(),
        }
    }

    #[test]
    fn tags_reach_their_revision_and_unknown_tags_are_named() {
        let r = routes();
        let serving = Some("svc-00001");
        assert_eq!(choose(None, serving, &r, "q"), Ok(None));
        assert_eq!(choose(Some("latest"), serving, &r, "q"), Ok(None));
        assert_eq!(choose(Some("svc-00001"), serving, &r, "q"), Ok(None));
        assert_eq!(
            choose(Some("green"), serving, &r, "q"),
            Ok(Some("svc-00002".into()))
        );
        let err = choose(Some("blue"), serving, &r, "q").expect_err("unknown tag");
        assert!(err.contains("`blue`") && err.contains("green"), "{err}");
        // A tag on the serving revision is the serving revision.
        assert_eq!(choose(Some("green"), Some("svc-00002"), &r, "q"), Ok(None));
        assert_eq!(r.other_revisions(serving), ["svc-00002"]);
        assert!(r.other_revisions(Some("svc-00002")).is_empty());
    }

    #[test]
    fn a_split_follows_the_percentages_and_is_stable_per_question() {
        let r = Routes {
            tags: BTreeMap::new(),
            traffic: vec![("a".into(), 90), ("b".into(), 10)],
        };
        let mut to_b = 0;
        for i in 0..10_000 {
            let q = format!("4f6c1a52-{i:04}-4e1b-9a55-2c3d5e7f9a0b");
            let first = choose(None, Some("a"), &r, &q).expect("routable");
            assert_eq!(first, choose(None, Some("a"), &r, &q).expect("routable"));
            if first.is_some() {
                to_b += 1;
            }
        }
        // 10 % of 10 000 is 1000; the standard deviation is 30.
        assert!((850..=1150).contains(&to_b), "{to_b} of 10000 went to b");
        // A revision in the split can also be asked by name.
        assert_eq!(choose(Some("b"), Some("a"), &r, "q"), Ok(Some("b".into())));
    }
}
