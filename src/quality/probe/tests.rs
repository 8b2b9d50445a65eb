use super::*;

fn out(text: &str) -> Output {
    Output {
        text: text.into(),
        finish_reason: Some("stop".into()),
        prompt_tokens: None,
        completion_tokens: None,
    }
}

fn by_name(name: &str) -> Probe {
    let cfg = CanaryConfig::default();
    probes(&cfg).into_iter().find(|p| p.name == name).unwrap()
}

#[test]
fn the_default_set_sends_explicit_sampling_and_streams() {
    let all = probes(&CanaryConfig::default());
    assert_eq!(all.len(), 5);
    for p in &all {
        assert_eq!(p.body["temperature"], 0.0, "{}", p.name);
        assert_eq!(p.body["top_p"], 1.0);
        assert_eq!(p.body["stream"], true);
        assert_eq!(p.body["stream_options"]["include_usage"], true);
        assert!(p.body.get("model").is_none());
    }
    let t = by_name("truncation");
    let est = t.ask.prompt_tokens_estimate.unwrap();
    assert!((1400..=1600).contains(&est), "{est}");
    assert!(by_name("json_schema").ask.wants_json);
    assert_eq!(by_name("temperature").repeats, 5);
}

#[test]
fn known_answer_normalises_and_names_the_failure() {
    let p = by_name("known_answer");
    let mut m = Memory::default();
    assert!(judge(&p, &[out(" 42.\n")], &mut m).pass);
    let v = judge(&p, &[out("42 zebra quantum")], &mut m);
    assert_eq!(v.signal, Some("wrong_answer"));
    let v = judge(&p, &[out("模型")], &mut m);
    assert_eq!(v.signal, Some("unexpected_script"), "{v:?}");
    let looped = "and then the model said ".repeat(4);
    let v = judge(&p, &[out(&looped)], &mut m);
    assert_eq!(v.signal, Some("repetition"), "{v:?}");
}

#[test]
fn json_probe_separates_broken_json_from_a_wrong_shape() {
    let p = by_name("json_schema");
    let mut m = Memory::default();
    assert!(judge(&p, &[out("{\"sum\": 5}")], &mut m).pass);
    assert_eq!(
        judge(&p, &[out("{sum\": 5")], &mut m).signal,
        Some("invalid_json")
    );
    assert_eq!(
        judge(&p, &[out("{\"total\": 5}")], &mut m).signal,
        Some("schema_mismatch")
    );
}

#[test]
fn truncation_probe_checks_the_needle_and_the_count() {
    let p = by_name("truncation");
    let est = p.ask.prompt_tokens_estimate.unwrap();
    let mut m = Memory::default();
    let mut o = out("Marmalade");
    o.prompt_tokens = Some(est);
    assert!(judge(&p, &[o.clone()], &mut m).pass);
    assert_eq!(m.prompt_tokens, Some(est));
    // The needle survives but the count fell against what this provider said before.
    o.prompt_tokens = Some(est * 8 / 10);
    let v = judge(&p, &[o], &mut m);
    assert_eq!(v.signal, Some("truncated_prompt"), "{v:?}");
    // Front dropped: the needle is gone and only the tail was counted.
    let mut lost = out("The");
    lost.prompt_tokens = Some(64);
    let v = judge(&p, &[lost], &mut Memory::default());
    assert_eq!(v.signal, Some("truncated_prompt"));
    assert!(v.reason.contains("64 tokens"), "{}", v.reason);
    // Counted whole but the needle is gone: the answer is wrong, nothing was cut.
    let mut noise = out("zebra quantum");
    noise.prompt_tokens = Some(est);
    let v = judge(&p, &[noise], &mut Memory::default());
    assert_eq!(v.signal, Some("wrong_answer"), "{v:?}");
}

#[test]
fn temperature_probe_compares_diversity_with_its_baseline() {
    let p = by_name("temperature");
    let mut m = Memory::default();
    let same: Vec<Output> = (0..5).map(|_| out("A cache keeps keys.")).collect();
    let v = judge(&p, &same, &mut m);
    assert!(v.pass && v.diversity == Some(0.0));
    let varied: Vec<Output> = (0..5).map(|i| out(&format!("answer {i}"))).collect();
    let v = judge(&p, &varied, &mut m);
    assert_eq!(v.signal, Some("output_diversity"));
    assert_eq!(v.diversity, Some(1.0));
}

#[test]
fn custom_probes_use_regex_and_exact_answers() {
    let mut cfg = CanaryConfig::default();
    cfg.builtin.clear();
    cfg.probes.push(CustomProbe {
        name: "capital".into(),
        prompt: "Capital of France?".into(),
        expect: Expect::Regex(regex::Regex::new("(?i)paris").unwrap()),
        max_tokens: 8,
        temperature: 0.0,
        models: vec!["m".into()],
    });
    let p = &probes(&cfg)[0];
    assert_eq!(p.models, ["m"]);
    let mut m = Memory::default();
    assert!(judge(p, &[out("It is Paris.")], &mut m).pass);
    assert_eq!(
        judge(p, &[out("Lyon")], &mut m).signal,
        Some("wrong_answer")
    );
}
