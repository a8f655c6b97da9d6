//! What a log line or an error may say of a database or server address: where it is and who connects,
//! never a password (URL `user:password@`, `?password=` or key-value `password=` forms alike).

/// `url` without its secrets: a PostgreSQL address as host, port, user and database; any other URL with
/// the password and the query left out.
pub fn redact(url: &str) -> String {
    if let Ok(config) = url.parse::<tokio_postgres::Config>() {
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|host| match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
        let mut parts = vec![format!("host={}", hosts.join(","))];
        if !ports.is_empty() {
            parts.push(format!("port={}", ports.join(",")));
        }
        parts.extend(config.get_user().map(|user| format!("user={user}")));
        parts.extend(config.get_dbname().map(|db| format!("dbname={db}")));
        return format!("postgres {}", parts.join(" "));
    }
    let without_query = url.split_once('?').map_or(url, |(base, _)| base);
    match (without_query.find("://"), without_query.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = without_query[scheme + 3..at].split_once(':').map_or(&without_query[scheme + 3..at], |(user, _)| user);
            format!("{}{user}@{}", &without_query[..scheme + 3], &without_query[at + 1..])
        }
        _ => without_query.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn no_form_of_a_password_is_printed() {
        for url in [
            "postgres://tally:s3cret@db.internal:5433/ledger",
            "postgresql://tally@db.internal/ledger?password=s3cret&sslmode=require",
            "host=db.internal port=5433 user=tally password=s3cret dbname=ledger",
            "host=/var/run/postgresql user=tally password='s3cret' dbname=ledger",
            "esdb://admin:s3cret@kurrent.internal:2113?tls=false",
            "kurrentdb+discover://admin:s3cret@cluster.internal:2113",
        ] {
            let shown = redact(url);
            assert!(!shown.contains("s3cret"), "{url} -> {shown}");
        }
        assert_eq!(
            redact("postgres://tally:s3cret@db.internal:5433/ledger"),
            "postgres host=db.internal port=5433 user=tally dbname=ledger"
        );
        assert_eq!(redact("esdb://admin:s3cret@kurrent.internal:2113?tls=false"), "esdb://admin@kurrent.internal:2113");
    }
}
