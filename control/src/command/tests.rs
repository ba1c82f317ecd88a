use super::*;

fn id() -> RequestId {
    RequestId {
        client: "c1".into(),
        seq: 7,
    }
}

#[test]
fn encode_decode_round_trip() {
    for command in [
        Command::Noop,
        Command::Put {
            key: "k".into(),
            value: "v".into(),
        },
        Command::Get { key: "k".into() },
        Command::Cas {
            key: "k".into(),
            expected: None,
            new: "n".into(),
        },
        Command::Execute {
            targets: Targets::Nodes { ids: [1, 2].into() },
            action: Action::Echo {
                payload: "p".into(),
            },
            deadline_ms: 100,
        },
        Command::Report {
            exec: 3,
            node: 2,
            result: NodeResult::Failed { error: "no".into() },
        },
    ] {
        let r = Request::new(id(), command);
        assert_eq!(Request::decode(&r.encode()).ok(), Some(r));
    }
}

#[test]
fn the_documented_encoding_decodes() {
    let bytes =
        br#"{"v":1,"id":{"client":"c1","seq":7},"command":{"kind":"put","key":"k","value":"v"}}"#;
    let r = Request::decode(bytes).expect("documented form");
    assert_eq!(r.acked_below, 0);
    assert_eq!(
        r.command,
        Command::Put {
            key: "k".into(),
            value: "v".into()
        }
    );
}

fn decode_err(s: &str) -> ControlError {
    match Request::decode(s.as_bytes()) {
        Ok(r) => panic!("{s} decoded to {r:?}"),
        Err(e) => e,
    }
}

#[test]
fn malformed_and_unknown_commands_are_rejected() {
    assert!(matches!(
        decode_err("not json"),
        ControlError::BadCommand(_)
    ));
    assert!(matches!(
        decode_err(r#"{"id":{"client":"c","seq":1},"command":{"kind":"noop"}}"#),
        ControlError::BadCommand(_)
    ));
    let unknown = decode_err(r#"{"v":1,"id":{"client":"c","seq":1},"command":{"kind":"reboot"}}"#);
    assert!(
        matches!(&unknown, ControlError::BadCommand(m) if m.contains("reboot")),
        "{unknown}"
    );
    assert!(matches!(
        decode_err(r#"{"v":1,"id":{"client":"c","seq":1},"command":{"kind":"put","key":"k"}}"#),
        ControlError::BadCommand(_)
    ));
    assert!(matches!(
        decode_err(
            r#"{"v":1,"id":{"client":"c","seq":1},"command":{"kind":"get","key":"k","extra":1}}"#
        ),
        ControlError::BadCommand(_)
    ));
    assert!(matches!(
        decode_err(r#"{"v":1,"id":{"client":"","seq":1},"command":{"kind":"noop"}}"#),
        ControlError::BadCommand(_)
    ));
    let empty_targets = r#"{"v":1,"id":{"client":"c","seq":1},"command":{"kind":"execute",
        "targets":{"to":"nodes","ids":[]},"action":{"action":"echo","payload":""},"deadline_ms":1}}"#;
    assert!(matches!(
        decode_err(empty_targets),
        ControlError::BadCommand(_)
    ));
    let big = "x".repeat(MAX_REGISTER_BYTES + 1);
    let r = Request::new(
        id(),
        Command::Put {
            key: "k".into(),
            value: big,
        },
    );
    assert!(matches!(
        Request::decode(&r.encode()),
        Err(ControlError::BadCommand(_))
    ));
}

#[test]
fn a_newer_version_is_a_version_error() {
    let e = decode_err(r#"{"v":4,"id":{"client":"c","seq":1},"command":{"kind":"teleport"}}"#);
    assert!(matches!(
        e,
        ControlError::UnsupportedVersion {
            found: 4,
            supported: COMMAND_VERSION
        }
    ));
    assert!(matches!(
        decode_err(r#"{"v":0,"id":{"client":"c","seq":1},"command":{"kind":"noop"}}"#),
        ControlError::UnsupportedVersion { found: 0, .. }
    ));
}

#[test]
fn a_client_cannot_send_a_batch_but_the_log_reads_one() {
    let inner = Request::new(id(), Command::Noop);
    let batch = Request::new(
        id(),
        Command::Batch {
            requests: vec![inner.clone(), inner],
        },
    );
    let bytes = batch.encode();
    assert!(matches!(
        Request::decode(&bytes),
        Err(ControlError::BadCommand(m)) if m.contains("batch")
    ));
    // As a log entry (not through `decode`) it round-trips.
    let read: Request = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(read, batch);
}

#[test]
fn only_a_batch_is_written_with_the_batch_version() {
    let inner = Request::new(id(), Command::Noop);
    // Client commands keep version 1, so members and clients of earlier
    // builds read them as before.
    assert_eq!(inner.v, 1);
    assert_eq!(Request::decode(&inner.encode()).unwrap(), inner);
    let batch = Request::new(
        id(),
        Command::Batch {
            requests: vec![inner.clone(), inner],
        },
    );
    assert_eq!(batch.v, BATCH_VERSION);
    const { assert!(BATCH_VERSION <= COMMAND_VERSION) };
    // Batches an earlier build wrote with version 1 are still read.
    let mut old = serde_json::to_value(&batch).unwrap();
    old["v"] = 1.into();
    let read: Request = serde_json::from_value(old).unwrap();
    assert_eq!(read.command, batch.command);
}

#[test]
fn app_commands_decode_in_the_documented_form_and_bad_values_are_refused() {
    let create = br#"{"v":1,"id":{"client":"c","seq":1},"command":{"kind":"app_create","spec":{
        "name":"web","host_name":"example.test","volume":"site","version":3,
        "cmd":"./serve","port_env":"PORT","idle_ms":60000,"min":0,"max":4,
        "cpu_percent":30,"scale_at_percent":80,"cooldown_ms":30000}}}"#;
    let r = Request::decode(create).expect("documented form");
    assert!(matches!(r.command, Command::AppCreate { spec } if spec.cpu_percent == Some(30)));
    let set = br#"{"v":1,"id":{"client":"c","seq":2},"command":{"kind":"app_set","name":"web",
        "patch":{"version":4,"unset":["cpu"]}}}"#;
    Request::decode(set).expect("documented form");
    let rm = br#"{"v":1,"id":{"client":"c","seq":3},"command":{"kind":"app_remove","name":"web"}}"#;
    // max-cpu is command version 3, also when it is being unset.
    let capped = String::from_utf8_lossy(create).replace(
        r#""cpu_percent":30"#,
        r#""cpu_percent":30,"cpu_max_percent":30"#,
    );
    let r = Request::decode(capped.as_bytes()).expect("documented form");
    assert_eq!(r.command.version(), CPU_MAX_VERSION);
    let r = Request::decode(
        &String::from_utf8_lossy(set)
            .replace("\"cpu\"", "\"cpu_max\"")
            .into_bytes(),
    )
    .expect("documented form");
    assert_eq!(r.command.version(), CPU_MAX_VERSION);
    assert_eq!(Request::decode(set).unwrap().command.version(), 1);
    Request::decode(rm).expect("documented form");

    let bad_max = String::from_utf8_lossy(create).replace(r#""max":4"#, r#""max":0"#);
    assert!(matches!(decode_err(&bad_max), ControlError::BadCommand(m) if m.contains("max 0")));
    let empty = r#"{"v":1,"id":{"client":"c","seq":2},"command":{"kind":"app_set","name":"web",
        "patch":{}}}"#;
    assert!(matches!(decode_err(empty), ControlError::BadCommand(m) if m.contains("nothing")));
    let bad_name = r#"{"v":1,"id":{"client":"c","seq":3},"command":{"kind":"app_remove",
        "name":"Web"}}"#;
    assert!(matches!(decode_err(bad_name), ControlError::BadCommand(m) if m.contains("app name")));
    let unknown = String::from_utf8_lossy(create).replace(r#""min":0"#, r#""mini":0"#);
    assert!(matches!(decode_err(&unknown), ControlError::BadCommand(_)));
}
