//! Route53 through the official SDK: zone lookup, record listing in Route53's own order, atomic
//! change batches. Every request takes a token from the shared rate limiter first.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_route53::types as r53;
use aws_sdk_route53::Client;

use super::limiter::RateLimiter;
use super::retry::{self, Idempotency};
use super::{AliasTarget, Change, ChangeAction, Dns, RecordSet, Zone};
use crate::{Error, Result};

const SERVICE: &str = "route53";
/// Route53's largest page of ListResourceRecordSets.
const PAGE: i32 = 300;

/// The `Dns` edge backed by Route53.
pub struct Route53Dns {
    client: Client,
    limiter: Arc<RateLimiter>,
    page: i32,
}

impl Route53Dns {
    /// `limiter` should be shared by everything in the process that talks to Route53.
    pub fn new(client: Client, limiter: Arc<RateLimiter>) -> Self {
        Route53Dns {
            client,
            limiter,
            page: PAGE,
        }
    }

    /// Smaller pages of ListResourceRecordSets, so tests can put page boundaries where they want
    /// them without writing hundreds of records.
    pub fn with_page_size(mut self, page: i32) -> Self {
        self.page = page.clamp(1, PAGE);
        self
    }

    async fn get_zone(&self, id: &str) -> Result<Option<Zone>> {
        let out = retry::call_optional(SERVICE, "GetHostedZone", &["NoSuchHostedZone"], || {
            let req = self.client.get_hosted_zone().id(id);
            let limiter = &self.limiter;
            async move {
                limiter.acquire().await;
                req.send().await
            }
        })
        .await?;
        Ok(out.and_then(|o| o.hosted_zone).map(|z| zone(&z)))
    }

    async fn zones_named(&self, name: &str) -> Result<Vec<Zone>> {
        let mut found = Vec::new();
        let mut next: Option<(String, Option<String>)> = Some((name.to_string(), None));
        while let Some((dns_name, zone_id)) = next.take() {
            let out = retry::call(
                SERVICE,
                "ListHostedZonesByName",
                Idempotency::Idempotent,
                || {
                    let req = self
                        .client
                        .list_hosted_zones_by_name()
                        .dns_name(&dns_name)
                        .set_hosted_zone_id(zone_id.clone())
                        .max_items(100);
                    let limiter = &self.limiter;
                    async move {
                        limiter.acquire().await;
                        req.send().await
                    }
                },
            )
            .await?;
            let page: Vec<Zone> = out.hosted_zones.iter().map(zone).collect();
            // Results are sorted by name from DNSName on: once a page ends past our name, stop.
            let last_matches = page.last().is_some_and(|z| z.name == name);
            found.extend(page.into_iter().filter(|z| z.name == name));
            if out.is_truncated && last_matches {
                if let Some(n) = out.next_dns_name {
                    next = Some((n, out.next_hosted_zone_id));
                }
            }
        }
        Ok(found)
    }

    /// One page of ListResourceRecordSets starting at `start`.
    async fn page(
        &self,
        zone_id: &str,
        start: Option<&(String, Option<r53::RrType>, Option<String>)>,
    ) -> Result<aws_sdk_route53::operation::list_resource_record_sets::ListResourceRecordSetsOutput>
    {
        retry::call(
            SERVICE,
            "ListResourceRecordSets",
            Idempotency::Idempotent,
            || {
                let mut req = self
                    .client
                    .list_resource_record_sets()
                    .hosted_zone_id(zone_id)
                    .max_items(self.page);
                if let Some((name, rtype, ident)) = start {
                    req = req
                        .start_record_name(name)
                        .set_start_record_type(rtype.clone())
                        .set_start_record_identifier(ident.clone());
                }
                let limiter = &self.limiter;
                async move {
                    limiter.acquire().await;
                    req.send().await
                }
            },
        )
        .await
    }

    /// Read pages from `start` until `done` says the page read is enough or the list ends.
    /// Records are deduplicated: moto ignores StartRecordIdentifier and repeats the weighted
    /// records of a (name, type) split across pages.
    async fn scan(
        &self,
        zone_id: &str,
        start: Option<String>,
        done: impl Fn(&[RecordSet]) -> bool,
    ) -> Result<Vec<RecordSet>> {
        let zone_id = bare_id(zone_id);
        let mut records = Vec::new();
        let mut seen = HashSet::new();
        let mut next = start.map(|n| (n, None, None));
        loop {
            let out = self.page(zone_id, next.as_ref()).await?;
            let page: Vec<RecordSet> = out.resource_record_sets.iter().map(from_sdk).collect();
            let enough = done(&page);
            for r in page {
                if seen.insert((r.name.clone(), r.rtype.clone(), r.set_identifier.clone())) {
                    records.push(r);
                }
            }
            if enough || !out.is_truncated {
                return Ok(records);
            }
            let start = match out.next_record_name {
                Some(name) => Some((name, out.next_record_type, out.next_record_identifier)),
                None => return Ok(records),
            };
            if start == next {
                // moto ignores StartRecordIdentifier: a page smaller than the weighted records of
                // one name and type would be asked for again and again.
                return Err(Error::Other(format!(
                    "ListResourceRecordSets of zone {zone_id} did not advance past {:?}",
                    start.map(|s| s.0)
                )));
            }
            next = start;
        }
    }
}

#[async_trait]
impl Dns for Route53Dns {
    async fn find_zone(&self, name_or_id: &str) -> Result<Zone> {
        let not_found = || {
            Error::NotFound(format!(
                "hosted zone {name_or_id} not found in this account: check spec.record.hostedZone"
            ))
        };
        let id = bare_id(name_or_id);
        if looks_like_zone_id(name_or_id) {
            if let Some(z) = self.get_zone(id).await? {
                return Ok(z);
            }
            if name_or_id.starts_with("/hostedzone/") {
                return Err(not_found());
            }
        }
        let name = normalize_name(name_or_id);
        let zones = self.zones_named(&name).await?;
        if zones.len() > 1 {
            // Two public zones of one name, or a public and a private one: choosing would be a
            // guess about which resolvers the user means, and a wrong guess writes the wrong zone.
            let ids: Vec<String> = zones
                .iter()
                .map(|z| {
                    format!(
                        "{} ({})",
                        z.id,
                        if z.private { "private" } else { "public" }
                    )
                })
                .collect();
            return Err(Error::Conflict(format!(
                "hosted zone name {name} matches {} hosted zones: {}; set spec.record.hostedZone to the id of the one to use",
                zones.len(),
                ids.join(", ")
            )));
        }
        zones.into_iter().next().ok_or_else(not_found)
    }

    async fn list_all(&self, zone_id: &str) -> Result<Vec<RecordSet>> {
        self.scan(zone_id, None, |_| false).await
    }

    async fn list_from(&self, zone_id: &str, name: &str) -> Result<Vec<RecordSet>> {
        let name = normalize_name(name);
        let stop = format!("_trafficshift.{name}");
        let suffix = format!(".{name}");
        let past = |r: &RecordSet| route53_order(&r.name, &stop) == Ordering::Greater;
        let records = self
            .scan(zone_id, Some(name.clone()), |page| page.iter().any(past))
            .await?;
        // Keep exactly the range [name, _trafficshift.<name>] so the answer does not depend on
        // where a page happens to end.
        Ok(records
            .into_iter()
            .filter(|r| (r.name == name || r.name.ends_with(&suffix)) && !past(r))
            .collect())
    }

    async fn change(&self, zone_id: &str, comment: &str, changes: &[Change]) -> Result<String> {
        let zone_id = bare_id(zone_id);
        let mut sdk_changes = Vec::with_capacity(changes.len());
        for c in changes {
            sdk_changes.push(to_sdk_change(c)?);
        }
        let batch = r53::ChangeBatch::builder()
            .comment(comment)
            .set_changes(Some(sdk_changes))
            .build()
            .map_err(|e| Error::Other(format!("route53 change batch: {e}")))?;
        let out = retry::call(
            SERVICE,
            "ChangeResourceRecordSets",
            Idempotency::NonIdempotent,
            || {
                let req = self
                    .client
                    .change_resource_record_sets()
                    .hosted_zone_id(zone_id)
                    .change_batch(batch.clone());
                let limiter = &self.limiter;
                async move {
                    limiter.acquire().await;
                    req.send().await
                }
            },
        )
        .await?;
        let info = out.change_info.ok_or_else(|| {
            Error::Other("route53 ChangeResourceRecordSets: the answer has no ChangeInfo".into())
        })?;
        Ok(bare_change_id(&info.id).to_string())
    }

    async fn insync(&self, change_id: &str) -> Result<bool> {
        let id = bare_change_id(change_id);
        let out = retry::call(SERVICE, "GetChange", Idempotency::Idempotent, || {
            let req = self.client.get_change().id(id);
            let limiter = &self.limiter;
            async move {
                limiter.acquire().await;
                req.send().await
            }
        })
        .await?;
        Ok(out
            .change_info
            .is_some_and(|i| i.status == r53::ChangeStatus::Insync))
    }
}

/// Route53 ids come as `Z123` or `/hostedzone/Z123`; we keep the bare id.
fn bare_id(id: &str) -> &str {
    id.strip_prefix("/hostedzone/").unwrap_or(id)
}

fn bare_change_id(id: &str) -> &str {
    id.strip_prefix("/change/").unwrap_or(id)
}

/// Zone ids are upper-case letters and digits (AWS ids start with Z; moto's do not), zone names
/// have dots. A dot-less upper-case name is tried as an id first, then as a name.
fn looks_like_zone_id(s: &str) -> bool {
    let id = bare_id(s);
    s.starts_with("/hostedzone/")
        || (!id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()))
}

fn zone(z: &r53::HostedZone) -> Zone {
    Zone {
        id: bare_id(&z.id).to_string(),
        name: normalize_name(&z.name),
        record_count: z.resource_record_set_count.unwrap_or_default(),
        private: z.config.as_ref().is_some_and(|c| c.private_zone),
    }
}

/// Lower case, trailing dot, Route53 escapes (`\052`, `\\`) decoded.
pub fn normalize_name(name: &str) -> String {
    let mut out = decode_escapes(name).to_ascii_lowercase();
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

/// Decode Route53's escapes: `\NNN` (three octal digits) is that byte, `\X` is X.
pub fn decode_escapes(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            let oct = &b[i + 1..b.len().min(i + 4)];
            if oct.len() == 3 && oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
            out.push(b[i + 1]);
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Route53's listing order: the name with its labels reversed and a trailing dot
/// (`www.example.com.` is `com.example.www.`), compared as one byte string (case-insensitive,
/// escapes decoded). So `-`, `*` and the other characters below `.` sort a label before its own
/// prefix: `com.example.a-b.` < `com.example.a.`, and `_trafficshift-x.api` comes before
/// `_trafficshift.api`.
pub fn route53_order(a: &str, b: &str) -> Ordering {
    order_key(a).cmp(&order_key(b))
}

fn order_key(name: &str) -> Vec<u8> {
    let name = normalize_name(name);
    let mut key = Vec::with_capacity(name.len() + 1);
    for label in name.trim_end_matches('.').rsplit('.') {
        key.extend_from_slice(label.as_bytes());
        key.push(b'.');
    }
    key
}

/// SDK record -> our model.
pub fn from_sdk(r: &r53::ResourceRecordSet) -> RecordSet {
    let alias = r.alias_target.as_ref().map(|a| AliasTarget {
        dns_name: normalize_name(&a.dns_name),
        hosted_zone_id: a.hosted_zone_id.clone(),
        evaluate_target_health: a.evaluate_target_health,
    });
    RecordSet {
        name: normalize_name(&r.name),
        rtype: r.r#type.as_str().to_string(),
        set_identifier: r.set_identifier.clone(),
        weight: r.weight,
        // An alias record has no TTL; moto reports TTL 0 for them, which a DELETE must not repeat.
        ttl: if alias.is_some() { None } else { r.ttl },
        alias,
        values: r
            .resource_records
            .iter()
            .flatten()
            .map(|v| v.value.clone())
            .collect(),
        health_check_id: r.health_check_id.clone(),
        other_routing: r.region.is_some()
            || r.failover.is_some()
            || r.geo_location.is_some()
            || r.geo_proximity_location.is_some()
            || r.multi_value_answer.is_some()
            || r.cidr_routing_config.is_some()
            || r.traffic_policy_instance_id.is_some(),
    }
}

/// Our model -> SDK record, exactly the fields we hold (a DELETE must repeat the record).
pub fn to_sdk(r: &RecordSet) -> Result<r53::ResourceRecordSet> {
    if r.other_routing {
        return Err(Error::Unsafe(format!(
            "record {} {} uses a routing policy trafficshift does not write",
            r.name, r.rtype
        )));
    }
    let values = if r.values.is_empty() {
        None
    } else {
        let mut v = Vec::with_capacity(r.values.len());
        for value in &r.values {
            v.push(
                r53::ResourceRecord::builder()
                    .value(value)
                    .build()
                    .map_err(|e| Error::Other(format!("route53 record value: {e}")))?,
            );
        }
        Some(v)
    };
    let alias = match &r.alias {
        Some(a) => Some(
            r53::AliasTarget::builder()
                .dns_name(&a.dns_name)
                .hosted_zone_id(&a.hosted_zone_id)
                .evaluate_target_health(a.evaluate_target_health)
                .build()
                .map_err(|e| Error::Other(format!("route53 alias target: {e}")))?,
        ),
        None => None,
    };
    r53::ResourceRecordSet::builder()
        .name(&r.name)
        .r#type(r53::RrType::from(r.rtype.as_str()))
        .set_set_identifier(r.set_identifier.clone())
        .set_weight(r.weight)
        .set_ttl(r.ttl)
        .set_alias_target(alias)
        .set_resource_records(values)
        .set_health_check_id(r.health_check_id.clone())
        .build()
        .map_err(|e| Error::Other(format!("route53 record {}: {e}", r.name)))
}

fn to_sdk_change(c: &Change) -> Result<r53::Change> {
    let action = match c.action {
        ChangeAction::Create => r53::ChangeAction::Create,
        ChangeAction::Delete => r53::ChangeAction::Delete,
        ChangeAction::Upsert => r53::ChangeAction::Upsert,
    };
    r53::Change::builder()
        .action(action)
        .resource_record_set(to_sdk(&c.record)?)
        .build()
        .map_err(|e| Error::Other(format!("route53 change: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_compares_reversed_names_as_strings() {
        use Ordering::*;
        assert_eq!(route53_order("a.example.com.", "a.example.com"), Equal);
        assert_eq!(route53_order("A.Example.COM.", "a.example.com."), Equal);
        // A name comes before everything under it.
        assert_eq!(route53_order("a.example.com.", "x.a.example.com."), Less);
        assert_eq!(route53_order("example.com.", "a.example.com."), Less);
        // Rightmost labels decide first.
        assert_eq!(route53_order("z.a.com.", "a.b.com."), Less);
        // One string with the trailing dot, not label by label: '-' (0x2d) and '*' (0x2a) sort
        // before '.', so "com.example.a-b." < "com.example.a." < "com.example.a.x.".
        assert_eq!(route53_order("a-b.example.com.", "a.example.com."), Less);
        assert_eq!(route53_order("a-b.example.com.", "x.a.example.com."), Less);
        assert_eq!(route53_order("a*.example.com.", "a.example.com."), Less);
        assert_eq!(
            route53_order(
                "_trafficshift-x.api.example.com.",
                "_trafficshift.api.example.com."
            ),
            Less
        );
        assert_eq!(
            route53_order("api.example.com.", "_trafficshift-x.api.example.com."),
            Less
        );
        assert_eq!(
            route53_order(
                "x._trafficshift.api.example.com.",
                "_trafficshift.api.example.com."
            ),
            Greater
        );
        // Bytewise: digits < '_' < lower-case letters; '*' before all of them.
        assert_eq!(route53_order("9.a.com.", "_trafficshift.a.com."), Less);
        assert_eq!(route53_order("_trafficshift.a.com.", "b.a.com."), Less);
        assert_eq!(route53_order("\\052.a.com.", "_trafficshift.a.com."), Less);
        assert_eq!(route53_order("*.a.com.", "\\052.a.com."), Equal);
        assert_eq!(route53_order("b.com.", "a.com."), Greater);
    }

    #[test]
    fn names_are_normalized() {
        assert_eq!(normalize_name("\\052.Example.com"), "*.example.com.");
        assert_eq!(normalize_name("a\\\\b.com."), "a\\b.com.");
        assert_eq!(normalize_name("a\\.b.com."), "a.b.com.");
        assert_eq!(normalize_name("x.com."), "x.com.");
        assert_eq!(decode_escapes("\\101\\142c"), "Abc");
    }

    #[test]
    fn ids_are_recognized() {
        assert!(looks_like_zone_id("Z123ABC"));
        assert!(looks_like_zone_id("/hostedzone/Z123ABC"));
        assert!(looks_like_zone_id("9U8ZOZMIFXIDUQ9RJIMGPJ"));
        assert!(!looks_like_zone_id("example.com"));
        assert!(!looks_like_zone_id("example.com."));
        assert_eq!(bare_id("/hostedzone/Z1"), "Z1");
        assert_eq!(bare_change_id("/change/C1"), "C1");
    }

    fn weighted() -> RecordSet {
        RecordSet {
            name: "api.example.com.".into(),
            rtype: "A".into(),
            set_identifier: Some("blue".into()),
            weight: Some(10),
            ttl: None,
            alias: Some(AliasTarget {
                dns_name: "d-1.execute-api.us-east-1.amazonaws.com.".into(),
                hosted_zone_id: "Z1UJRXOUMOOFQ8".into(),
                evaluate_target_health: true,
            }),
            values: vec![],
            health_check_id: None,
            other_routing: false,
        }
    }

    #[test]
    fn records_round_trip_through_the_sdk_type() {
        let r = weighted();
        assert_eq!(from_sdk(&to_sdk(&r).expect("valid")), r);
        let txt = RecordSet {
            name: "_trafficshift.api.example.com.".into(),
            rtype: "TXT".into(),
            set_identifier: None,
            weight: None,
            ttl: Some(60),
            alias: None,
            values: vec!["\"owner=x\"".into()],
            health_check_id: Some("hc-1".into()),
            other_routing: false,
        };
        assert_eq!(from_sdk(&to_sdk(&txt).expect("valid")), txt);
    }

    #[test]
    fn foreign_routing_is_detected_and_not_written() {
        let sdk = r53::ResourceRecordSet::builder()
            .name("\\052.Example.com.")
            .r#type(r53::RrType::A)
            .set_identifier("eu")
            .region(r53::ResourceRecordSetRegion::EuWest1)
            .ttl(0)
            .alias_target(
                r53::AliasTarget::builder()
                    .dns_name("LB.example.NET")
                    .hosted_zone_id("Z2")
                    .evaluate_target_health(false)
                    .build()
                    .expect("valid"),
            )
            .build()
            .expect("valid");
        let r = from_sdk(&sdk);
        assert_eq!(r.name, "*.example.com.");
        assert!(r.other_routing);
        assert_eq!(r.ttl, None);
        assert_eq!(
            r.alias.as_ref().map(|a| a.dns_name.as_str()),
            Some("lb.example.net.")
        );
        assert!(matches!(to_sdk(&r), Err(Error::Unsafe(_))));
    }
}
