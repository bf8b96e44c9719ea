//! Routing: how the strategies spread requests over a model group (counted over many
//! choices, with the tolerance each test states), order tiers, tag filtering, aliases,
//! cooldowns, and the attempts plan (retries in the group, then fallbacks by error class).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use tollgate_core::proto;
use tollgate_core::routing::attempts::{Chooser, RoutePlan};
use tollgate_core::routing::{
    choose, AttemptReport, ChoiceContext, ErrorClass, RoutingBook, Shuffler,
};
use tollgate_core::State;

fn deployment(id: &str, model_name: &str) -> proto::Deployment {
    proto::Deployment {
        id: id.into(),
        model_name: model_name.into(),
        provider: proto::ProviderKind::Openai as i32,
        provider_name: "openai".into(),
        upstream_model: format!("upstream-{id}"),
        api_base: format!("http://127.0.0.1:9/{id}"),
        ..Default::default()
    }
}

fn state_of(deployments: Vec<proto::Deployment>, router: Option<proto::RouterSettings>) -> State {
    let (state, problems) = State::from_snapshot(proto::Snapshot {
        version: 1,
        settings: Some(proto::Settings {
            router,
            ..Default::default()
        }),
        deployments,
        keys: Vec::new(),
    });
    assert!(problems.is_empty(), "{problems:?}");
    state
}

fn router(strategy: proto::RoutingStrategy) -> proto::RouterSettings {
    proto::RouterSettings {
        strategy: strategy as i32,
        retries: Some(proto::RetryPolicy {
            num_retries: 2,
            ..Default::default()
        }),
        cooldown: Some(proto::CooldownPolicy {
            allowed_fails: 3,
            cooldown_ms: 5_000,
            ..Default::default()
        }),
        ..Default::default()
    }
}

const NOW: u64 = 1_700_000_000_000;

fn context<'a>(tags: &'a [String], tried: &'a [String]) -> ChoiceContext<'a> {
    ChoiceContext {
        now_ms: NOW,
        tags,
        tried,
        estimated_tokens: 10,
        stream: false,
        pushed: None,
    }
}

/// How often each deployment id is chosen in `rounds` choices.
fn spread(state: &State, model: &str, book: &RoutingBook, rounds: usize) -> HashMap<String, usize> {
    let group = state.model(model).unwrap().deployments();
    let mut shuffler = Shuffler::new(42);
    let mut counts = HashMap::new();
    for _ in 0..rounds {
        let chosen = choose(
            group,
            &state.router,
            book,
            &context(&[], &[]),
            &mut shuffler,
        )
        .unwrap();
        *counts.entry(chosen.id.clone()).or_insert(0) += 1;
    }
    counts
}

#[test]
fn simple_shuffle_spreads_evenly_without_weights() {
    let state = state_of(
        vec![
            deployment("a", "m"),
            deployment("b", "m"),
            deployment("c", "m"),
        ],
        Some(router(proto::RoutingStrategy::SimpleShuffle)),
    );
    let counts = spread(&state, "m", &RoutingBook::new(), 30_000);
    // Each third within 3% of 10,000 (a deterministic generator: the counts are fixed, the
    // tolerance says what the test claims).
    for id in ["a", "b", "c"] {
        let count = counts[id];
        assert!((9_700..=10_300).contains(&count), "{id}: {count}");
    }
}

#[test]
fn simple_shuffle_follows_weight_then_rpm() {
    let mut heavy = deployment("heavy", "m");
    heavy.weight = 3.0;
    let mut light = deployment("light", "m");
    light.weight = 1.0;
    let state = state_of(
        vec![heavy, light],
        Some(router(proto::RoutingStrategy::SimpleShuffle)),
    );
    let counts = spread(&state, "m", &RoutingBook::new(), 40_000);
    // 3 : 1, each within 2% of its share.
    assert!((29_400..=30_600).contains(&counts["heavy"]), "{counts:?}");
    assert!((9_400..=10_600).contains(&counts["light"]), "{counts:?}");

    let mut fast = deployment("fast", "m");
    fast.limits = Some(proto::RateLimits {
        rpm: Some(900),
        ..Default::default()
    });
    let mut slow = deployment("slow", "m");
    slow.limits = Some(proto::RateLimits {
        rpm: Some(100),
        ..Default::default()
    });
    let state = state_of(
        vec![fast, slow],
        Some(router(proto::RoutingStrategy::SimpleShuffle)),
    );
    let counts = spread(&state, "m", &RoutingBook::new(), 10_000);
    // 9 : 1 by rpm, within 2 points.
    assert!((8_800..=9_200).contains(&counts["fast"]), "{counts:?}");
}

#[test]
fn order_tiers_are_tried_first_to_last() {
    let mut first = deployment("first", "m");
    first.order = 1;
    let mut second = deployment("second", "m");
    second.order = 2;
    let unordered = deployment("unordered", "m");
    let state = state_of(
        vec![unordered, second, first],
        Some(router(proto::RoutingStrategy::SimpleShuffle)),
    );
    assert_eq!(spread(&state, "m", &RoutingBook::new(), 100)["first"], 100);
    // With "first" cooling down, tier 2 serves.
    let mut book = RoutingBook::new();
    for _ in 0..4 {
        book.started("first", NOW);
        book.finished(
            &failure("first", 500, ErrorClass::ServerError),
            &state.router,
            NOW,
        );
    }
    assert!(book.cooling_down("first", NOW));
    assert_eq!(spread(&state, "m", &book, 100)["second"], 100);
}

fn failure(id: &str, status: u16, class: ErrorClass) -> AttemptReport<'_> {
    AttemptReport {
        deployment_id: id,
        status,
        class: Some(class),
        latency_ms: 5,
        first_byte_ms: None,
        tokens: None,
        completion_tokens: None,
        message: "boom",
    }
}

fn success(id: &str, latency_ms: u64, tokens: u64) -> AttemptReport<'_> {
    AttemptReport {
        deployment_id: id,
        status: 200,
        class: None,
        latency_ms,
        first_byte_ms: None,
        tokens: Some(tokens),
        completion_tokens: Some(tokens),
        message: "",
    }
}

#[test]
fn a_deployment_cools_down_after_its_allowed_fails_and_comes_back() {
    let state = state_of(
        vec![deployment("a", "m"), deployment("b", "m")],
        Some(router(proto::RoutingStrategy::SimpleShuffle)),
    );
    let mut book = RoutingBook::new();
    for fail in 1..=3 {
        book.finished(
            &failure("a", 429, ErrorClass::RateLimit),
            &state.router,
            NOW,
        );
        assert!(
            !book.cooling_down("a", NOW),
            "after {fail} of 3 allowed fails"
        );
    }
    book.finished(
        &failure("a", 429, ErrorClass::RateLimit),
        &state.router,
        NOW,
    );
    assert!(book.cooling_down("a", NOW));
    assert_eq!(spread(&state, "m", &book, 200)["b"], 200);
    // cooldown_time is 5 s: back by itself.
    assert!(book.cooling_down("a", NOW + 4_999));
    assert!(!book.cooling_down("a", NOW + 5_000));
    let health = book.health("a", NOW);
    assert_eq!(health.cooldown_until_ms, Some(NOW + 5_000));
    assert_eq!(health.failures, 4);
    assert_eq!(health.last_error.unwrap().status, 429);
    // Client errors say nothing about the deployment.
    for _ in 0..10 {
        book.finished(
            &failure("b", 400, ErrorClass::BadRequest),
            &state.router,
            NOW,
        );
    }
    assert!(!book.cooling_down("b", NOW));
}

#[test]
fn a_groups_only_deployment_never_cools_down() {
    let state = state_of(
        vec![deployment("only", "m")],
        Some(router(proto::RoutingStrategy::SimpleShuffle)),
    );
    let mut book = RoutingBook::new();
    for _ in 0..10 {
        book.finished(
            &failure("only", 500, ErrorClass::ServerError),
            &state.router,
            NOW,
        );
    }
    assert!(book.cooling_down("only", NOW));
    assert_eq!(spread(&state, "m", &book, 10)["only"], 10);
}

#[test]
fn least_busy_takes_the_fewest_in_flight() {
    let state = state_of(
        vec![
            deployment("a", "m"),
            deployment("b", "m"),
            deployment("c", "m"),
        ],
        Some(router(proto::RoutingStrategy::LeastBusy)),
    );
    let mut book = RoutingBook::new();
    book.started("a", NOW);
    book.started("a", NOW);
    book.started("b", NOW);
    book.started("c", NOW);
    book.started("c", NOW);
    assert_eq!(spread(&state, "m", &book, 50)["b"], 50);
}

#[test]
fn latency_based_takes_the_fastest_within_the_buffer() {
    let mut settings = router(proto::RoutingStrategy::LatencyBased);
    let state = state_of(
        vec![
            deployment("slow", "m"),
            deployment("fast", "m"),
            deployment("close", "m"),
        ],
        Some(settings.clone()),
    );
    let mut book = RoutingBook::new();
    // ms per completion token: slow 10, fast 2, close 2.2.
    book.finished(&success("slow", 1_000, 100), &state.router, NOW);
    book.finished(&success("fast", 200, 100), &state.router, NOW);
    book.finished(&success("close", 220, 100), &state.router, NOW);
    assert_eq!(spread(&state, "m", &book, 100)["fast"], 100);
    // A 20% buffer makes "close" as good as "fast": about half each (within 5 points).
    settings.lowest_latency_buffer = 0.2;
    let state = state_of(
        vec![
            deployment("slow", "m"),
            deployment("fast", "m"),
            deployment("close", "m"),
        ],
        Some(settings),
    );
    let counts = spread(&state, "m", &book, 10_000);
    assert_eq!(counts.get("slow"), None);
    assert!((4_500..=5_500).contains(&counts["fast"]), "{counts:?}");
}

#[test]
fn a_latency_older_than_the_ttl_is_forgotten_so_the_slow_deployment_is_tried_again() {
    let mut settings = router(proto::RoutingStrategy::LatencyBased);
    settings.latency_ttl_ms = 60_000;
    let state = state_of(
        vec![deployment("slow", "m"), deployment("fast", "m")],
        Some(settings),
    );
    let mut book = RoutingBook::new();
    // slow was measured two minutes ago (10 ms per token), fast just now (2).
    book.finished(&success("slow", 1_000, 100), &state.router, NOW - 120_000);
    book.finished(&success("fast", 200, 100), &state.router, NOW);
    // slow's latency is past its ttl: unmeasured, it goes first (as a new deployment does).
    assert_eq!(spread(&state, "m", &book, 10)["slow"], 10);
    // Measured again (its old average forgotten, not smoothed into): fast again.
    book.finished(&success("slow", 900, 100), &state.router, NOW);
    assert_eq!(spread(&state, "m", &book, 10)["fast"], 10);
    assert_eq!(book.latency_ms("slow", false, NOW, 60_000), Some(9.0));
}

#[test]
fn usage_based_takes_the_least_used_with_headroom() {
    let mut a = deployment("a", "m");
    a.limits = Some(proto::RateLimits {
        tpm: Some(1_000),
        ..Default::default()
    });
    let b = deployment("b", "m");
    let state = state_of(vec![a, b], Some(router(proto::RoutingStrategy::UsageBased)));
    let mut book = RoutingBook::new();
    book.finished(&success("a", 10, 100), &state.router, NOW);
    book.finished(&success("b", 10, 500), &state.router, NOW);
    assert_eq!(spread(&state, "m", &book, 20)["a"], 20);
    // "a" reaches its tpm: "b" serves although it used more.
    book.finished(&success("a", 10, 895), &state.router, NOW);
    assert_eq!(spread(&state, "m", &book, 20)["b"], 20);
}

#[test]
fn a_deployment_refused_for_its_own_cap_is_replaced_without_a_retry_and_learned() {
    let mut capped = deployment("capped", "m");
    capped.limits = Some(proto::RateLimits {
        rpm: Some(2),
        ..Default::default()
    });
    // "capped" is the first tier: chosen first while it has headroom.
    capped.order = 1;
    let mut free = deployment("free", "m");
    free.order = 2;
    let state = state_of(
        vec![capped, free],
        Some(router(proto::RoutingStrategy::SimpleShuffle)),
    );
    let mut book = RoutingBook::new();
    let mut shuffler = Shuffler::new(5);
    let first = {
        let mut chooser = plain_chooser(&state, &book, &mut shuffler);
        let mut plan = RoutePlan::start("m", &Default::default(), &mut chooser).unwrap();
        let first = plan.current().id.clone();
        // The other deployment instead, not counted as a retry; then none is left.
        let instead = plan.instead(&mut chooser).unwrap();
        assert_ne!(instead.id, first);
        assert_eq!(
            (plan.retries(), plan.fallbacks(), plan.attempts()),
            (0, 0, 2)
        );
        assert!(plan.instead(&mut chooser).is_none());
        first
    };
    assert_eq!(first, "capped");
    // Told the cap is reached (by other filters), this book stops choosing it this minute.
    let capped = state
        .deployments()
        .find(|d| d.id == "capped")
        .unwrap()
        .clone();
    book.reached_cap(&capped, false, NOW);
    assert_eq!(spread(&state, "m", &book, 20)["free"], 20);
}

#[test]
fn cost_based_takes_the_cheapest() {
    let priced = |id: &str, input: f64| {
        let mut d = deployment(id, "m");
        d.pricing = Some(proto::Pricing {
            input_cost_per_token: Some(input),
            output_cost_per_token: Some(input * 2.0),
            ..Default::default()
        });
        d
    };
    let state = state_of(
        vec![
            priced("dear", 0.00001),
            priced("cheap", 0.000001),
            deployment("unpriced", "m"),
        ],
        Some(router(proto::RoutingStrategy::CostBased)),
    );
    assert_eq!(spread(&state, "m", &RoutingBook::new(), 20)["cheap"], 20);
}

#[test]
fn tag_filtering_picks_tagged_deployments_then_default() {
    let mut eu = deployment("eu", "m");
    eu.tags = vec!["eu".into()];
    let mut fallback = deployment("fallback", "m");
    fallback.tags = vec!["default".into()];
    let mut settings = router(proto::RoutingStrategy::SimpleShuffle);
    settings.tag_filtering = true;
    let state = state_of(vec![eu, fallback], Some(settings));
    let group = state.model("m").unwrap().deployments();
    let mut shuffler = Shuffler::new(1);
    let book = RoutingBook::new();
    let eu_tag = vec!["eu".to_string()];
    let us_tag = vec!["us".to_string()];
    for _ in 0..20 {
        let chosen = choose(
            group,
            &state.router,
            &book,
            &context(&eu_tag, &[]),
            &mut shuffler,
        );
        assert_eq!(chosen.unwrap().id, "eu");
        let chosen = choose(
            group,
            &state.router,
            &book,
            &context(&us_tag, &[]),
            &mut shuffler,
        );
        assert_eq!(chosen.unwrap().id, "fallback");
    }
}

#[test]
fn aliases_are_groups_of_their_own_and_hidden_ones_are_not_listed() {
    let mut settings = router(proto::RoutingStrategy::SimpleShuffle);
    settings.aliases = vec![
        proto::ModelGroupAlias {
            alias: "gpt-4-group".into(),
            model: "gpt-4".into(),
            hidden: false,
        },
        proto::ModelGroupAlias {
            alias: "gpt-4-group".into(),
            model: "gpt-4-turbo".into(),
            hidden: false,
        },
        proto::ModelGroupAlias {
            alias: "secret".into(),
            model: "gpt-4".into(),
            hidden: true,
        },
    ];
    let state = state_of(
        vec![deployment("g4", "gpt-4"), deployment("g4t", "gpt-4-turbo")],
        Some(settings),
    );
    let ids: Vec<&str> = state
        .model("gpt-4-group")
        .unwrap()
        .deployments()
        .iter()
        .map(|d| d.id.as_str())
        .collect();
    assert_eq!(ids, ["g4", "g4t"]);
    assert_eq!(state.model("secret").unwrap().deployments().len(), 1);
    let listed: serde_json::Value = serde_json::from_slice(state.models_json()).unwrap();
    let names: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gpt-4", "gpt-4-turbo", "gpt-4-group"]);
}

/// A chooser for a plain request (no tags, 10 estimated tokens, not a stream) at `NOW`.
fn plain_chooser<'a>(
    state: &'a State,
    book: &'a RoutingBook,
    shuffler: &'a mut Shuffler,
) -> Chooser<'a> {
    Chooser {
        state,
        book,
        shuffler,
        now_ms: NOW,
        tags: &[],
        estimated_tokens: 10,
        stream: false,
    }
}

fn plan_state(fallbacks: Vec<proto::Fallbacks>) -> State {
    let mut settings = router(proto::RoutingStrategy::SimpleShuffle);
    settings.fallbacks = fallbacks;
    settings.context_window_fallbacks = vec![proto::Fallbacks {
        model: "gpt".into(),
        fallbacks: vec!["gpt-long".into()],
    }];
    state_of(
        vec![
            deployment("gpt-1", "gpt"),
            deployment("gpt-2", "gpt"),
            deployment("claude-1", "claude"),
            deployment("long-1", "gpt-long"),
        ],
        Some(settings),
    )
}

/// The deployment ids a request for `model` is tried on when every attempt fails with
/// `class`.
fn attempts_on_failure(state: &State, model: &str, class: ErrorClass) -> Vec<String> {
    let book = RoutingBook::new();
    let mut shuffler = Shuffler::new(7);
    let mut chooser = Chooser {
        state,
        book: &book,
        shuffler: &mut shuffler,
        now_ms: NOW,
        tags: &[],
        estimated_tokens: 10,
        stream: false,
    };
    let mut plan = RoutePlan::start(model, &Default::default(), &mut chooser).unwrap();
    let mut ids = vec![plan.current().id.clone()];
    while let Some(next) = plan.next(class, &mut chooser) {
        ids.push(next.id.clone());
    }
    ids
}

#[test]
fn retries_go_to_the_other_deployment_then_the_fallback_group() {
    let state = plan_state(vec![proto::Fallbacks {
        model: "gpt".into(),
        fallbacks: vec!["claude".into()],
    }]);
    let ids = attempts_on_failure(&state, "gpt", ErrorClass::RateLimit);
    // num_retries 2 in "gpt" (the other deployment first, then one of the two again), then
    // "claude" with its own 2 retries (on its only deployment).
    assert_eq!(ids.len(), 6, "{ids:?}");
    let mut first_two = ids[..2].to_vec();
    first_two.sort();
    assert_eq!(first_two, ["gpt-1", "gpt-2"]);
    assert!(ids[2].starts_with("gpt-"));
    assert_eq!(ids[3..], ["claude-1", "claude-1", "claude-1"]);
}

#[test]
fn only_a_retry_on_a_deployment_already_tried_waits_and_the_wait_doubles() {
    let mut settings = router(proto::RoutingStrategy::SimpleShuffle);
    settings.retries = Some(proto::RetryPolicy {
        num_retries: 5,
        ..Default::default()
    });
    settings.retry_base_delay_ms = 1_000;
    settings.retry_max_delay_ms = 3_000;
    let state = state_of(
        vec![deployment("gpt-1", "gpt"), deployment("gpt-2", "gpt")],
        Some(settings),
    );
    let book = RoutingBook::new();
    let mut shuffler = Shuffler::new(11);
    let mut chooser = plain_chooser(&state, &book, &mut shuffler);
    let mut plan = RoutePlan::start("gpt", &Default::default(), &mut chooser).unwrap();
    assert_eq!(plan.backoff_ms(&state.router), 0);
    let mut waits = Vec::new();
    while plan.next(ErrorClass::ServerError, &mut chooser).is_some() {
        waits.push(plan.backoff_ms(&state.router));
    }
    // The other deployment at once; then each repeat waits 1 s, 2 s, then the 3 s cap.
    assert_eq!(waits, [0, 1_000, 2_000, 3_000, 3_000]);

    // A group's only deployment, retried with a backoff: relayed (only the attempts route
    // waits); without a backoff it goes straight to its provider.
    let mut settings = router(proto::RoutingStrategy::SimpleShuffle);
    settings.retry_base_delay_ms = 500;
    let state = state_of(vec![deployment("solo-1", "solo")], Some(settings));
    let mut chooser = plain_chooser(&state, &book, &mut shuffler);
    let plan = RoutePlan::start("solo", &Default::default(), &mut chooser).unwrap();
    assert!(plan.may_try_another(&state));
    let state = state_of(
        vec![deployment("solo-1", "solo")],
        Some(router(proto::RoutingStrategy::SimpleShuffle)),
    );
    let mut chooser = plain_chooser(&state, &book, &mut shuffler);
    let plan = RoutePlan::start("solo", &Default::default(), &mut chooser).unwrap();
    assert!(!plan.may_try_another(&state));
}

#[test]
fn a_context_window_error_skips_retries_and_takes_its_own_fallbacks() {
    let state = plan_state(vec![proto::Fallbacks {
        model: "gpt".into(),
        fallbacks: vec!["claude".into()],
    }]);
    let ids = attempts_on_failure(&state, "gpt", ErrorClass::ContextWindow);
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(ids[1], "long-1");
}

#[test]
fn bad_requests_are_neither_retried_nor_fall_back() {
    let state = plan_state(vec![proto::Fallbacks {
        model: "gpt".into(),
        fallbacks: vec!["claude".into()],
    }]);
    assert_eq!(
        attempts_on_failure(&state, "gpt", ErrorClass::BadRequest).len(),
        1
    );
    // Authentication: no retry by default, but the fallback group is tried.
    let ids = attempts_on_failure(&state, "gpt", ErrorClass::Authentication);
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(ids[1], "claude-1");
}

#[test]
fn error_classes_follow_status_and_code() {
    assert_eq!(ErrorClass::of(200, None), None);
    assert_eq!(ErrorClass::of(429, None), Some(ErrorClass::RateLimit));
    assert_eq!(ErrorClass::of(504, None), Some(ErrorClass::Timeout));
    assert_eq!(ErrorClass::of(408, None), Some(ErrorClass::Timeout));
    assert_eq!(ErrorClass::of(503, None), Some(ErrorClass::ServerError));
    assert_eq!(ErrorClass::of(529, None), Some(ErrorClass::ServerError));
    assert_eq!(ErrorClass::of(0, None), Some(ErrorClass::ServerError));
    assert_eq!(ErrorClass::of(401, None), Some(ErrorClass::Authentication));
    assert_eq!(ErrorClass::of(404, None), Some(ErrorClass::NotFound));
    assert_eq!(ErrorClass::of(422, None), Some(ErrorClass::BadRequest));
    assert_eq!(
        ErrorClass::of(400, Some("context_length_exceeded")),
        Some(ErrorClass::ContextWindow)
    );
    assert_eq!(
        ErrorClass::of(400, Some("content_filter")),
        Some(ErrorClass::ContentPolicy)
    );
}

#[test]
fn a_requests_own_fallbacks_and_retries_replace_the_routers() {
    let state = plan_state(vec![proto::Fallbacks {
        model: "gpt".into(),
        fallbacks: vec!["claude".into()],
    }]);
    let body = br#"{"model":"gpt","messages":[{"role":"user","content":"hi"}],"fallbacks":[{"gpt":["gpt-long"]},{"other":["claude"]}],"num_retries":0}"#;
    let summary = tollgate_core::request::summarize_chat_request(body).unwrap();
    assert_eq!(
        summary.routing.fallbacks.as_deref(),
        Some(&["gpt-long".to_string()][..])
    );
    assert_eq!(summary.routing.num_retries, Some(0));
    let book = RoutingBook::new();
    let mut shuffler = Shuffler::new(3);
    let mut chooser = plain_chooser(&state, &book, &mut shuffler);
    let mut plan = RoutePlan::start("gpt", &summary.routing, &mut chooser).unwrap();
    // No retry (num_retries 0), straight to the request's own fallback.
    assert_eq!(
        plan.next(ErrorClass::ServerError, &mut chooser).unwrap().id,
        "long-1"
    );
    assert!(plan.next(ErrorClass::ServerError, &mut chooser).is_none());
    assert_eq!((plan.retries(), plan.fallbacks()), (0, 1));
}

#[test]
fn routing_parameters_never_reach_an_openai_provider() {
    let state = state_of(vec![deployment("solo", "m")], None);
    let context = tollgate_core::providers::TranslateContext { now_unix: 1 };
    for body in [
        r#"{"fallbacks":["m"],"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"model":"m", "num_retries" : 3 ,"messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"context_window_fallbacks":[{"m":["m"]}],"content_policy_fallbacks":null}"#,
    ] {
        let plan =
            tollgate_core::gateway::plan_chat_request(&state, body.as_bytes(), &context).unwrap();
        let sent: serde_json::Value = serde_json::from_slice(&plan.body)
            .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(&plan.body)));
        assert_eq!(
            sent,
            serde_json::json!({"model": "upstream-solo", "messages": [{"role": "user", "content": "hi"}]}),
            "{body}"
        );
    }
    let bad = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"fallbacks":"m"}"#;
    let error = tollgate_core::gateway::plan_chat_request(&state, bad, &context).unwrap_err();
    assert_eq!(error.param(), Some("fallbacks"));
}

#[test]
fn routing_parameters_of_completions_and_embeddings_never_reach_an_openai_provider() {
    let state = state_of(vec![deployment("solo", "m")], None);
    let context = tollgate_core::providers::TranslateContext { now_unix: 1 };
    let caller = tollgate_core::auth::Caller::default();
    let completion =
        br#"{"fallbacks":[{"m":["x"]}],"model":"m","prompt":"hi", "num_retries" : 1 }"#;
    let summary = tollgate_core::completions::summarize_completion_request(completion).unwrap();
    assert_eq!(
        summary.routing.fallbacks.as_deref(),
        Some(&["x".to_string()][..])
    );
    assert_eq!(summary.routing.num_retries, Some(1));
    let plan = tollgate_core::completions::plan_completion_request_for(
        &state, &caller, completion, &context,
    )
    .unwrap();
    let sent: serde_json::Value = serde_json::from_slice(&plan.body).unwrap();
    assert_eq!(
        sent,
        serde_json::json!({"model": "upstream-solo", "prompt": "hi"})
    );

    let embeddings =
        br#"{"model":"m","input":["a"],"content_policy_fallbacks":null,"fallbacks":["x"]}"#;
    let request =
        tollgate_core::providers::embeddings::parse_embeddings_request(embeddings).unwrap();
    assert_eq!(
        request.routing.fallbacks.as_deref(),
        Some(&["x".to_string()][..])
    );
    let (plan, _) = tollgate_core::providers::embeddings::plan_embeddings_request_for(
        &state, &caller, embeddings, &context,
    )
    .unwrap();
    let sent: serde_json::Value = serde_json::from_slice(&plan.body).unwrap();
    assert_eq!(
        sent,
        serde_json::json!({"model": "upstream-solo", "input": ["a"]})
    );
    let bad = br#"{"model":"m","input":"a","num_retries":-1}"#;
    let error = tollgate_core::providers::embeddings::parse_embeddings_request(bad).unwrap_err();
    assert_eq!(error.param(), Some("num_retries"));
}

#[test]
fn the_control_planes_cooldowns_are_routed_around_and_kept_across_snapshots() {
    use prost::Message;
    let snapshot = |version: u64| proto::ControlMessage {
        kind: Some(proto::control_message::Kind::Snapshot(proto::Snapshot {
            version,
            settings: None,
            deployments: vec![deployment("a", "m"), deployment("b", "m")],
            keys: Vec::new(),
        })),
    };
    let mut state = None;
    State::update(&mut state, &snapshot(1).encode_to_vec()).unwrap();
    let cooldowns = proto::ControlMessage {
        kind: Some(proto::control_message::Kind::Cooldowns(
            proto::DeploymentCooldowns {
                cooldowns: vec![proto::DeploymentCooldown {
                    deployment_id: "a".into(),
                    until_unix_ms: NOW + 1_000,
                    ..Default::default()
                }],
            },
        )),
    };
    let applied = State::update(&mut state, &cooldowns.encode_to_vec())
        .unwrap()
        .unwrap();
    assert!(applied.kind.leaves_version());
    assert_eq!((applied.version, applied.keys), (1, 1));
    // A new snapshot keeps them.
    State::update(&mut state, &snapshot(2).encode_to_vec()).unwrap();
    let state = state.unwrap();
    assert_eq!(state.pushed_cooldowns().until("a", NOW), Some(NOW + 1_000));
    let group = state.model("m").unwrap().deployments();
    let mut shuffler = Shuffler::new(5);
    let book = RoutingBook::new();
    for now_ms in [NOW, NOW + 999] {
        let context = ChoiceContext {
            now_ms,
            pushed: Some(state.pushed_cooldowns()),
            ..context(&[], &[])
        };
        for _ in 0..20 {
            let chosen = choose(group, &state.router, &book, &context, &mut shuffler).unwrap();
            assert_eq!(chosen.id, "b");
        }
    }
    // Over: "a" is back.
    let context = ChoiceContext {
        now_ms: NOW + 1_000,
        pushed: Some(state.pushed_cooldowns()),
        ..context(&[], &[])
    };
    let chosen: std::collections::HashSet<String> = (0..50)
        .map(|_| {
            choose(group, &state.router, &book, &context, &mut shuffler)
                .unwrap()
                .id
                .clone()
        })
        .collect();
    assert_eq!(chosen.len(), 2);
}
