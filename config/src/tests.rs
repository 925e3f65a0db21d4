use std::collections::BTreeSet;

use super::*;

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn err_text(r: Result<Config, ConfigError>) -> String {
    r.expect_err("config should be rejected").to_string()
}

#[test]
fn no_file_gives_embedded_defaults() {
    let c = Config::load_from(None, no_env()).unwrap();
    assert_eq!(c.feed.backend, FeedBackend::Sqlite);
    assert_eq!(c.crm.http_listen.port(), 8080);
    assert_eq!(c.gateway.http_listen.port(), 8081);
    assert_eq!(
        c.node.feed_path(),
        std::path::Path::new("./data/feed.sqlite")
    );
    assert_eq!(
        c.crm.resolved_database_url(&c.node),
        "sqlite://./data/crm.sqlite"
    );
}

fn leaf_keys(prefix: &str, table: &toml::Table, out: &mut BTreeSet<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) if !t.is_empty() => leaf_keys(&key, t, out),
            _ => {
                out.insert(key);
            }
        }
    }
}

#[test]
fn example_file_documents_every_key_and_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/switchboard.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let example: toml::Table = toml::from_str(&text).unwrap();
    let mut documented = BTreeSet::new();
    leaf_keys("", &example, &mut documented);
    let defaults = toml::Table::try_from(Config::default()).unwrap();
    let mut all = BTreeSet::new();
    leaf_keys("", &defaults, &mut all);
    // Optional keys have no default value; they are documented as comments.
    for key in &all {
        assert!(
            documented.contains(key),
            "example does not document `{key}`"
        );
    }
    assert!(text.contains("database_url_file"));
    // Keys of list entries have no default to compare with: take them from
    // a default entry of each kind.
    for (list, entry) in [
        (
            "managers",
            toml::Table::try_from(ManagerConfig::default()).unwrap(),
        ),
        (
            "queues",
            toml::Table::try_from(QueueConfig::default()).unwrap(),
        ),
        (
            "rules",
            toml::Table::try_from(RuleConfig::default()).unwrap(),
        ),
    ] {
        let first = example["routing"][list][0].as_table().unwrap();
        for key in entry.keys() {
            assert!(
                first.contains_key(key),
                "example's first routing.{list} entry lacks `{key}`"
            );
        }
    }
    for optional in ["supervisor", "overflow", "sla"] {
        assert!(
            example["routing"]["queues"][0]
                .as_table()
                .unwrap()
                .contains_key(optional)
        );
    }
    // Each kind of channel: its first example lists every key it has.
    let channels = example["channels"].as_array().unwrap();
    for entry in [
        ChannelConfig::Telegram(TelegramConfig::default()),
        ChannelConfig::Vk(VkConfig::default()),
        ChannelConfig::Viber(ViberConfig::default()),
        ChannelConfig::Jivosite(JivositeConfig::default()),
        ChannelConfig::Roistat(RoistatConfig::default()),
        ChannelConfig::Comagic(CallTrackingConfig::default()),
        ChannelConfig::Uis(CallTrackingConfig::default()),
        ChannelConfig::Widget(WidgetConfig::default()),
        ChannelConfig::Team(TeamConfig::default()),
    ] {
        let kind = entry.kind();
        let first = channels
            .iter()
            .find(|c| c["type"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("example has no {kind} channel"))
            .as_table()
            .unwrap();
        for key in toml::Table::try_from(&entry).unwrap().keys() {
            assert!(
                first.contains_key(key),
                "example's {kind} channel lacks `{key}`"
            );
        }
    }
    let c = Config::load_from(Some(&path), no_env()).unwrap();
    assert_eq!(c.routing.managers.len(), 2);
    assert_eq!(
        c.routing.queues[0].sla.first_response.get(Workload::Chat),
        Some(std::time::Duration::from_secs(120))
    );
}

#[test]
fn unknown_key_is_named() {
    let msg = err_text(Config::from_toml_str(
        "[feed]\nbakend = \"kafka\"\n",
        no_env(),
    ));
    assert!(msg.contains("feed.bakend"), "{msg}");
    assert!(msg.contains("backend"), "should list valid keys: {msg}");
}

#[test]
fn unknown_section_is_named() {
    let msg = err_text(Config::from_toml_str(
        "[gatway]\nhttp_listen = \"1.2.3.4:1\"\n",
        no_env(),
    ));
    assert!(msg.contains("gatway"), "{msg}");
}

#[test]
fn bad_enum_value_names_key_value_and_choices() {
    let msg = err_text(Config::from_toml_str(
        "[feed]\nbackend = \"kafak\"\n",
        no_env(),
    ));
    assert!(msg.contains("feed.backend"), "{msg}");
    assert!(msg.contains("kafak"), "{msg}");
    assert!(msg.contains("sqlite") && msg.contains("kafka"), "{msg}");
}

#[test]
fn bad_socket_address_names_key_and_value() {
    let msg = err_text(Config::from_toml_str(
        "[crm]\nhttp_listen = \"localhost\"\n",
        no_env(),
    ));
    assert!(msg.contains("crm.http_listen"), "{msg}");
    assert!(msg.contains("localhost"), "{msg}");
}

#[test]
fn env_overrides_file_and_is_typed_by_default() {
    let c = Config::from_toml_str(
        "[gateway]\nmax_body_bytes = 2048\n",
        env(&[
            ("SWITCHBOARD_GATEWAY__MAX_BODY_BYTES", "4096"),
            ("SWITCHBOARD_FEED__BACKEND", "kafka"),
            ("SWITCHBOARD_FEED__KAFKA__BROKERS", "a:1, b:2"),
            ("SWITCHBOARD_FEED__KAFKA__PROPERTIES__CLIENT.RACK", "r1"),
            ("SWITCHBOARD_UNRELATED", "ignored"),
            ("PATH", "/bin"),
        ]),
    )
    .unwrap();
    assert_eq!(c.gateway.max_body_bytes, 4096);
    assert_eq!(c.feed.backend, FeedBackend::Kafka);
    assert_eq!(c.feed.kafka.brokers, vec!["a:1", "b:2"]);
    assert_eq!(c.feed.kafka.properties["client.rack"], "r1");
}

#[test]
fn bad_env_value_names_the_variable() {
    let msg = err_text(Config::from_toml_str(
        "",
        env(&[("SWITCHBOARD_GATEWAY__MAX_BODY_BYTES", "lots")]),
    ));
    assert!(msg.contains("gateway.max_body_bytes"), "{msg}");
    assert!(msg.contains("SWITCHBOARD_GATEWAY__MAX_BODY_BYTES"), "{msg}");
    assert!(msg.contains("integer"), "{msg}");

    let msg = err_text(Config::from_toml_str(
        "",
        env(&[("SWITCHBOARD_GATEWAY__DEFAULT_COUNTRY", "XX")]),
    ));
    assert!(msg.contains("gateway.default_country"), "{msg}");
    assert!(
        msg.contains("SWITCHBOARD_GATEWAY__DEFAULT_COUNTRY"),
        "{msg}"
    );
}

#[test]
fn unknown_env_key_is_an_error() {
    let msg = err_text(Config::from_toml_str(
        "",
        env(&[("SWITCHBOARD_FEED__BAKEND", "kafka")]),
    ));
    assert!(msg.contains("feed.bakend"), "{msg}");
    assert!(msg.contains("SWITCHBOARD_FEED__BAKEND"), "{msg}");
}

#[test]
fn range_and_format_checks() {
    for (toml, key) in [
        ("[gateway]\nmax_body_bytes = 10", "gateway.max_body_bytes"),
        (
            "[gateway]\ndefault_country = \"Russia\"",
            "gateway.default_country",
        ),
        ("[feed]\nnamespace = \"a b\"", "feed.namespace"),
        ("[feed.kafka]\nbrokers = [\"nohost\"]", "feed.kafka.brokers"),
        ("[feed.kafka]\npartitions = 0", "feed.kafka.partitions"),
        (
            "[feed.kafka.properties]\nacks = \"1\"",
            "feed.kafka.properties.\"acks\"",
        ),
        ("[crm]\ndatabase_url = \"mysql://x\"", "crm.database_url"),
        (
            "[shutdown]\ngrace_period = \"forever\"",
            "shutdown.grace_period",
        ),
        ("[shutdown]\ngrace_period = \"1h\"", "shutdown.grace_period"),
        ("[log]\nlevel = \"loud=[\"", "log.level"),
        (
            "[gateway]\ncors_allowed_origins = [\"example.com\"]",
            "gateway.cors_allowed_origins",
        ),
    ] {
        let err = Config::from_toml_str(toml, no_env()).expect_err(toml);
        assert_eq!(err.key(), Some(key), "{toml}: {err}");
    }
}

#[test]
fn country_is_normalised() {
    let c = Config::from_toml_str("[gateway]\ndefault_country = \"kz\"", no_env()).unwrap();
    assert_eq!(c.gateway.default_country, "KZ");
}

#[test]
fn database_url_from_file_and_redaction() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("url");
    std::fs::write(&f, "postgres://u:hunter2@db/crm\n").unwrap();
    let c = Config::from_toml_str(
        &format!("[crm]\ndatabase_url_file = {:?}", f.display().to_string()),
        no_env(),
    )
    .unwrap();
    assert_eq!(c.crm.database_url, "postgres://u:hunter2@db/crm");
    assert_eq!(redact_url(&c.crm.database_url), "postgres://u:***@db/crm");
    let msg = err_text(Config::from_toml_str(
        "[crm]\ndatabase_url = \"mysql://u:hunter2@db/crm\"",
        no_env(),
    ));
    assert!(!msg.contains("hunter2"), "password leaked: {msg}");
}

#[test]
fn syntax_error_is_reported() {
    let err = Config::from_toml_str("[feed\n", no_env()).unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
}

fn routing_err(toml: &str) -> ConfigError {
    let base = r#"
[[routing.managers]]
id = "a"
queues = ["sales"]
[[routing.managers]]
id = "b"
[[routing.queues]]
name = "sales"
[[routing.queues]]
name = "night"
"#;
    Config::from_toml_str(&format!("{base}{toml}"), no_env()).expect_err(toml)
}

#[test]
fn routing_mistakes_name_the_key() {
    for (toml, key) in [
        ("[[routing.managers]]\nid = \"a\"", "routing.managers[2].id"),
        (
            "[[routing.managers]]\nid = \"c\"\ntimezone = \"Mars/Olympus\"",
            "routing.managers[2].timezone",
        ),
        (
            "[[routing.managers]]\nid = \"c\"\nhours = [\"mon-fri 18:00-09:00\"]",
            "routing.managers[2].hours",
        ),
        (
            "[[routing.managers]]\nid = \"c\"\nhours = [\"someday 09:00-18:00\"]",
            "routing.managers[2].hours",
        ),
        (
            "[[routing.managers]]\nid = \"c\"\nholidays = [\"31.12.2026\"]",
            "routing.managers[2].holidays[0]",
        ),
        (
            "[[routing.managers]]\nid = \"c\"\nqueues = [\"nope\"]",
            "routing.managers[2].queues[0]",
        ),
        (
            "[[routing.managers]]\nid = \"c\"\nweight = 0",
            "routing.managers[2].weight",
        ),
        (
            "[[routing.queues]]\nname = \"x\"\nsupervisor = \"nobody\"",
            "routing.queues[2].supervisor",
        ),
        (
            "[[routing.queues]]\nname = \"x\"\npolicy = \"random\"",
            "routing.queues[2].policy",
        ),
        (
            "[[routing.queues]]\nname = \"x\"\nsla = { on_breach = \"escalate\" }",
            "routing.queues[2].sla.on_breach",
        ),
        (
            "[[routing.queues]]\nname = \"x\"\nsla = { first_response = { chat = \"soon\" } }",
            "routing.queues[2].sla.first_response",
        ),
        (
            "[[routing.queues]]\nname = \"x\"\nout_of_hours = { action = \"queue\", queue = \"nope\" }",
            "routing.queues[2].out_of_hours.queue",
        ),
        (
            "[[routing.queues]]\nname = \"x\"\noverflow = { queue = \"x\", after = \"1m\" }",
            "routing.queues[2].overflow.queue",
        ),
        (
            "[[routing.rules]]\nqueue = \"sales\"\nchannels = [\"fax\"]",
            "routing.rules[0].channels[0]",
        ),
        (
            "[[routing.rules]]\nqueue = \"nope\"",
            "routing.rules[0].queue",
        ),
        (
            "[routing]\ndefault_queue = \"nope\"",
            "routing.default_queue",
        ),
        (
            "[routing]\nstate = \"redis\"\nredis_url = \"localhost\"",
            "routing.redis_url",
        ),
    ] {
        let err = routing_err(toml);
        assert_eq!(err.key(), Some(key), "{toml}\n{err}");
    }
}

#[test]
fn weekly_hours_parse() {
    let w =
        WeeklyHours::parse(&["mon-fri 09:00-18:00".into(), "sat,sun 10:00-14:30".into()]).unwrap();
    assert_eq!(w.days[0], vec![(540, 1080)]);
    assert_eq!(w.days[4], vec![(540, 1080)]);
    assert_eq!(w.days[5], vec![(600, 870)]);
    assert_eq!(w.days[6], vec![(600, 870)]);
    assert!(WeeklyHours::parse(&[]).unwrap().is_always());
    assert!(WeeklyHours::parse(&["mon 09:00-24:00".into()]).is_ok());
    for bad in [
        "mon 9-18",
        "fri-mon 09:00-18:00",
        "mon 09:00-25:00",
        "mon 09:60-10:00",
    ] {
        assert!(WeeklyHours::parse(&[bad.into()]).is_err(), "{bad}");
    }
}

#[test]
fn the_demo_configuration_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo.toml");
    let config = crate::Config::load(Some(&path)).unwrap();
    assert_eq!(config.sip.users.len(), 2);
    assert_eq!(config.sip.numbers[0].number, "+74950000000");
    assert_eq!(
        config.sip.trunks[0].addresses,
        [std::net::IpAddr::from([127, 0, 0, 1])]
    );
}

#[test]
fn email_mistakes_name_the_key_and_never_show_the_password() {
    let mailbox = |extra: &str, incoming: &str| {
        format!(
            "[[email.mailboxes]]\nname = \"sales\"\naddress = \"sales@example.com\"\n{extra}\n\
             [email.mailboxes.incoming]\nhost = \"imap.example.com\"\nusername = \"u\"\n{incoming}\n"
        )
    };
    for (toml, key) in [
        (mailbox("", ""), "email.mailboxes[0].incoming.password"),
        (
            mailbox("", "password = \"p\"\npassword_env = \"X\""),
            "email.mailboxes[0].incoming.password",
        ),
        (
            mailbox("", "password_env = \"SWITCHBOARD_TEST_SURELY_UNSET\""),
            "email.mailboxes[0].incoming.password_env",
        ),
        (
            mailbox("", "password_file = \"/nonexistent/pass\""),
            "email.mailboxes[0].incoming.password_file",
        ),
        (
            // The server keys are flattened into `incoming`: serde names the
            // table and the bad value with its choices.
            mailbox("", "password = \"hunter2\"\nsecurity = \"ssl\""),
            "unknown variant `ssl`, expected one of `tls`, `starttls`, `none`",
        ),
        (
            mailbox("", "password = \"hunter2\"\npoll_interval = \"0s\""),
            "email.mailboxes[0].incoming.poll_interval",
        ),
        (
            mailbox("", "password = \"hunter2\"\nprotocol = \"pop3\"")
                .replace("imap.example.com", "imap example"),
            "email.mailboxes[0].incoming.host",
        ),
        (
            mailbox("owner = \"nobody\"", "password = \"hunter2\""),
            "email.mailboxes[0].owner",
        ),
        (
            mailbox("", "password = \"hunter2\"").replace("sales@example.com", "sales"),
            "email.mailboxes[0].address",
        ),
        (
            format!(
                "{}{}",
                mailbox("", "password = \"hunter2\""),
                mailbox("", "password = \"hunter2\"")
            ),
            "email.mailboxes[1].name",
        ),
        (
            format!(
                "{}[email.mailboxes.smtp]\nhost = \"smtp.example.com\"\nusername = \"u\"\n",
                mailbox("", "password = \"hunter2\"")
            ),
            "email.mailboxes[0].smtp.password",
        ),
        (
            "[[email.forms]]\nname = \"f\"\nfrom = \"forms@example.com\"\n[email.forms.fields]\nname = \"Имя\"\n"
                .to_owned(),
            "email.forms[0].fields",
        ),
        (
            "[[email.forms]]\nname = \"f\"\nfrom = \"a@b.c\"\n[email.forms.fields]\nphone = \"Тел\"\nfax = \"Факс\"\n"
                .to_owned(),
            "email.forms[0].fields.fax",
        ),
    ] {
        let routing = "[[routing.managers]]\nid = \"ivanov\"\n[[routing.queues]]\nname = \"q\"\n";
        let err = Config::from_toml_str(&format!("{routing}{toml}"), no_env())
            .expect_err(&format!("should be rejected: {toml}"));
        assert!(
            err.to_string().contains(key) || err.key() == Some(key),
            "{toml}\n→ {err} (expected {key})"
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
    // An SMTP relay without a login, and a personal mailbox, are fine.
    let ok = format!(
        "[[routing.managers]]\nid = \"ivanov\"\n[[routing.queues]]\nname = \"q\"\n{}[email.mailboxes.smtp]\nhost = \"127.0.0.1\"\nport = 25\nsecurity = \"none\"\n",
        mailbox("owner = \"ivanov\"", "password = \"hunter2\"")
    );
    let c = Config::from_toml_str(&ok, no_env()).unwrap();
    assert_eq!(c.email.mailboxes[0].owner, "ivanov");
    assert_eq!(c.email.mailboxes[0].incoming.server.port_or(993, 143), 993);
    assert!(!format!("{:?}", c.email).contains("hunter2"));
}

#[test]
fn channel_mistakes_name_the_key_and_never_show_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("tg.token");
    std::fs::write(&token_file, "42:from-a-file\n").unwrap();
    let routing = "[[routing.managers]]\nid = \"ivanov\"\n[[routing.queues]]\nname = \"q\"\n";
    for (toml, key) in [
        ("[[channels]]\ntype = \"telegram\"\nname = \"tg\"\n".to_owned(), "channels[0].token"),
        (
            "[[channels]]\ntype = \"telegram\"\nname = \"tg\"\ntoken = { env = \"SWITCHBOARD_TEST_SURELY_UNSET\" }\n".to_owned(),
            "channels[0].token",
        ),
        (
            "[[channels]]\ntype = \"telegram\"\nname = \"tg\"\ntoken = { file = \"/nonexistent/tg\" }\n".to_owned(),
            "channels[0].token",
        ),
        (
            "[[channels]]\ntype = \"telegram\"\nname = \"tg\"\ntoken = \"hunter2\"\nmode = \"webhook\"\nwebhook_secret = \"has spaces\"\n".to_owned(),
            "channels[0].webhook_secret",
        ),
        (
            "[[channels]]\ntype = \"telegram\"\nname = \"t g\"\ntoken = \"hunter2\"\n".to_owned(),
            "channels[0].name",
        ),
        (
            "[[channels]]\ntype = \"telegram\"\nname = \"tg\"\ntoken = \"hunter2\"\nowner = \"petrov\"\n".to_owned(),
            "channels[0].owner",
        ),
        (
            "[[channels]]\ntype = \"telegram\"\nname = \"tg\"\ntoken = \"hunter2\"\n[[channels]]\ntype = \"viber\"\nname = \"tg\"\nauth_token = \"hunter2\"\n".to_owned(),
            "channels[1].name",
        ),
        (
            "[[channels]]\ntype = \"vk\"\nname = \"vk\"\nconfirmation = \"c\"\nsecret = \"hunter2\"\naccess_token = \"hunter2\"\n".to_owned(),
            "channels[0].group_id",
        ),
        (
            "[[channels]]\ntype = \"vk\"\nname = \"vk\"\ngroup_id = 5\nconfirmation = \"c\"\nsecret = \"hunter2\"\naccess_token = \"hunter2\"\napi_url = \"ftp://x\"\n".to_owned(),
            "channels[0].api_url",
        ),
        (
            "[[channels]]\ntype = \"jivosite\"\nname = \"jivo\"\ntoken = \"hunter2\"\n".to_owned(),
            "channels[0].token",
        ),
        (
            "[[channels]]\ntype = \"roistat\"\nname = \"rs\"\ntoken = \"0123456789abcdef\"\napi_key = \"hunter2\"\n".to_owned(),
            "channels[0].project",
        ),
        (
            "[[channels]]\ntype = \"roistat\"\nname = \"rs\"\ntoken = \"0123456789abcdef\"\nproject = 7\n".to_owned(),
            "channels[0].api_key",
        ),
        (
            "[[channels]]\ntype = \"uis\"\nname = \"uis\"\ntoken = \"0123456789abcdef\"\naccess_token = \"hunter2\"\napi_url = \"dataapi\"\n".to_owned(),
            "channels[0].api_url",
        ),
        (
            "[[channels]]\ntype = \"comagic\"\nname = \"cm\"\ntoken = \"hunter2\"\naccess_token = \"hunter2\"\n".to_owned(),
            "channels[0].token",
        ),
        (
            "[[channels]]\ntype = \"widget\"\nname = \"site\"\nsecret = \"hunter2\"\n".to_owned(),
            "channels[0].secret",
        ),
        (
            "[[channels]]\ntype = \"widget\"\nname = \"site\"\nsecret = \"0123456789abcdefgh\"\nallowed_origins = [\"shop.example\"]\n".to_owned(),
            "channels[0].allowed_origins[0]",
        ),
        (
            "[[channels]]\ntype = \"whatsapp\"\nname = \"w\"\n".to_owned(),
            "unknown variant `whatsapp`",
        ),
        (
            "[[channels]]\ntype = \"viber\"\nname = \"v\"\nauth_token = \"hunter2\"\ntoken = \"x\"\n".to_owned(),
            "unknown field `token`",
        ),
    ] {
        let err = Config::from_toml_str(&format!("{routing}{toml}"), no_env())
            .expect_err(&format!("should be rejected: {toml}"));
        assert!(
            err.to_string().contains(key) || err.key() == Some(key),
            "{toml}\n→ {err} (expected {key})"
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
    let ok = format!(
        "{routing}[[channels]]\ntype = \"telegram\"\nname = \"tg\"\nowner = \"ivanov\"\ntoken = {{ file = \"{}\" }}\n",
        token_file.display()
    );
    let c = Config::from_toml_str(&ok, no_env()).unwrap();
    let ChannelConfig::Telegram(t) = &c.channels[0] else {
        panic!("not telegram: {:?}", c.channels[0]);
    };
    assert_eq!(
        t.token.resolve("channels[0].token").unwrap(),
        "42:from-a-file"
    );
    assert_eq!(c.channels[0].owner(), "ivanov");
    assert!(!format!("{c:?}").contains("from-a-file"));
}
