//! Validation of `spec.aws`: the shapes STS and the SDK would refuse only at run time, caught at
//! load with the document position instead.

use super::AwsSpec;

/// `(path, message)` for each problem of a split's `spec.aws`.
pub fn problems(aws: &AwsSpec) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(problem) = role_arn_problem(&aws.role_arn) {
        out.push((
            "spec.aws.roleArn".to_string(),
            format!(
                "roleArn '{}' is not an IAM role ARN: {problem} (expected arn:aws:iam::<12-digit account>:role/<name>)",
                aws.role_arn
            ),
        ));
    }
    if let Some(region) = &aws.region {
        if !is_region(region) {
            out.push((
                "spec.aws.region".to_string(),
                format!("region '{region}' is not an AWS region name such as eu-west-1"),
            ));
        }
    }
    if let Some(name) = &aws.session_name {
        if !(2..=64).contains(&name.len()) || !name.bytes().all(is_session_byte) {
            out.push((
                "spec.aws.sessionName".to_string(),
                format!("sessionName '{name}' is invalid: use 2-64 letters, digits and _+=,.@-"),
            ));
        }
    }
    if let Some(id) = &aws.external_id {
        let ok = (2..=1224).contains(&id.len())
            && id
                .bytes()
                .all(|b| is_session_byte(b) || b == b':' || b == b'/');
        if !ok {
            out.push((
                "spec.aws.externalId".to_string(),
                "externalId is invalid: use 2-1224 letters, digits and _+=,.@:/-".to_string(),
            ));
        }
    }
    out
}

/// The characters STS allows in a role session name (`[\w+=,.@-]`).
fn is_session_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b)
}

/// Why `arn` is not `arn:<partition>:iam::<account>:role/<path/><name>`, if it is not.
fn role_arn_problem(arn: &str) -> Option<String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = parts[..] else {
        return Some("it needs six ':'-separated parts".into());
    };
    if prefix != "arn" {
        return Some("it must start with 'arn:'".into());
    }
    if !["aws", "aws-cn", "aws-us-gov"].contains(&partition) {
        return Some(format!(
            "partition '{partition}' is not aws, aws-cn or aws-us-gov"
        ));
    }
    if service != "iam" {
        return Some(format!("service '{service}' is not iam"));
    }
    if !region.is_empty() {
        return Some("IAM ARNs have no region (arn:aws:iam::...)".into());
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Some(format!("account '{account}' is not 12 digits"));
    }
    let Some(path_and_name) = resource.strip_prefix("role/") else {
        return Some("the resource must be role/<name>".into());
    };
    let (path, name) = path_and_name
        .rsplit_once('/')
        .unwrap_or(("", path_and_name));
    if !(1..=64).contains(&name.len()) || !name.bytes().all(is_session_byte) {
        return Some(format!(
            "role name '{name}' must be 1-64 letters, digits and _+=,.@-"
        ));
    }
    // A path is `/`-separated segments of printable ASCII, at most 512 characters in all.
    let bad_segment = |s: &str| s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic());
    if path.len() > 510 || (!path.is_empty() && path.split('/').any(bad_segment)) {
        return Some(format!("role path '/{path}/' is invalid"));
    }
    None
}

/// `eu-west-1`, `us-gov-west-1`, `cn-north-1`, `ap-southeast-2`: letters-and-dashes, then a number.
fn is_region(r: &str) -> bool {
    let Some((head, n)) = r.rsplit_once('-') else {
        return false;
    };
    let words: Vec<&str> = head.split('-').collect();
    r.len() <= 32
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
        && words.len() >= 2
        && words
            .iter()
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(arn: &str) -> AwsSpec {
        AwsSpec {
            role_arn: arn.into(),
            external_id: None,
            region: None,
            session_name: None,
        }
    }

    #[test]
    fn role_arns() {
        for ok in [
            "arn:aws:iam::222222222222:role/dns-writer",
            "arn:aws-cn:iam::123456789012:role/team/a/dns_writer+x=y,z.w@v-1",
            "arn:aws-us-gov:iam::123456789012:role/r",
        ] {
            assert_eq!(role_arn_problem(ok), None, "{ok}");
            assert_eq!(spec(ok).account_id().map(str::len), Some(12));
        }
        for (bad, why) in [
            ("dns-writer", "six"),
            ("arn:aws:iam::22222222222:role/x", "12 digits"),
            ("arn:aws:iam::2222222222a2:role/x", "12 digits"),
            ("arn:aws:sts::222222222222:role/x", "not iam"),
            ("arn:aws:iam:eu-west-1:222222222222:role/x", "no region"),
            ("arn:aws:iam::222222222222:user/x", "role/"),
            ("arn:aws:iam::222222222222:role/", "role name"),
            ("arn:aws:iam::222222222222:role/a//b", "path"),
            ("arn:aws-eu:iam::222222222222:role/x", "partition"),
            ("arn:aws:iam::222222222222:role/bad name", "role name"),
        ] {
            let p = role_arn_problem(bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(p.contains(why), "{bad}: {p}");
        }
    }

    #[test]
    fn regions_sessions_and_external_ids() {
        for ok in ["eu-west-1", "us-gov-west-1", "cn-north-1", "ap-southeast-2"] {
            assert!(is_region(ok), "{ok}");
        }
        for bad in [
            "",
            "eu-west",
            "EU-WEST-1",
            "euwest1",
            "eu--west-1",
            "eu-west-1a",
        ] {
            assert!(!is_region(bad), "{bad}");
        }
        let mut s = spec("arn:aws:iam::222222222222:role/x");
        s.session_name = Some("trafficshift@prod".into());
        s.external_id = Some("abc:def/1".into());
        s.region = Some("eu-west-1".into());
        assert!(problems(&s).is_empty());
        for bad in ["x", "has space", &"a".repeat(65)] {
            s.session_name = Some(bad.to_string());
            assert_eq!(problems(&s)[0].0, "spec.aws.sessionName", "{bad}");
        }
        s.session_name = None;
        s.external_id = Some("x".into());
        assert_eq!(problems(&s)[0].0, "spec.aws.externalId");
    }
}
