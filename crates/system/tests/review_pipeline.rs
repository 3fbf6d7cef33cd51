//! The review pipeline end to end over loopback TCP: a real forge served with
//! `net::serve`, the SCM client over `HttpClient` + `TokioConnector`, and a
//! town driven by hand (operations, ticks on a `ManualClock`). Agent starts
//! go to a recording runner; PR polls and merges go to the forge.

use gastown::forge::{CheckRun, Fault, FaultKind, Forge, ForgeConfig, RepoSettings, ThreadKind};
use gastown::model::{labels, BeadStatus, BeadType, MergeMode, RigOverrides};
use gastown::net::{serve, HttpClient, TokioConnector};
use gastown::scm::{self, InvalidKind, PrState, ScmClient, ScmConfig, ScmError};
use gastown::store::open_in_memory;
use gastown::time::{ManualClock, Timestamp, MINUTE_MS, SECOND_MS};
use gastown::town::effects::{BoxFuture, Effect, EffectRunner, Outcome, RecordingRunner};
use gastown::town::{AddRig, ConvoyTask, DoneReport, SlingBead, SlingConvoy, TickReport, Town, TownOptions, Watermark};
use std::sync::Arc;
use std::time::Duration;

const T0: Timestamp = Timestamp(1_780_000_000_000);
const OWNER: &str = "acme";
const REPO: &str = "app";
const TOKEN: &str = "forge-token";

struct Net {
    forge: Arc<Forge>,
    base: String,
    http: HttpClient,
}

async fn start_forge(clock: &ManualClock) -> Net {
    let cfg = ForgeConfig { web_host: "github.com".into(), token: Some(TOKEN.into()), seed: 7 };
    let forge = Forge::in_memory(Arc::new(clock.clone()), cfg);
    forge.create_repo(OWNER, REPO, &RepoSettings::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = forge.router();
    tokio::spawn(async move {
        let _ = serve(listener, router).await;
    });
    Net { forge, base, http: HttpClient::new(Arc::new(TokioConnector), Duration::from_secs(5)) }
}

impl Net {
    fn client(&self) -> ScmClient {
        ScmClient::new(self.http.clone(), ScmConfig::for_forge(&self.base, "github.com", Some(TOKEN)))
    }
    fn client_with(&self, f: impl FnOnce(&mut ScmConfig)) -> ScmClient {
        let mut cfg = ScmConfig::for_forge(&self.base, "github.com", Some(TOKEN));
        f(&mut cfg);
        ScmClient::new(self.http.clone(), cfg)
    }
    /// A polecat pushes `branch` and opens a PR against main. Returns (number, url).
    fn open_pr(&self, branch: &str) -> (u64, String) {
        self.forge.push(OWNER, REPO, branch, false).unwrap();
        let p = self.forge.create_pull(OWNER, REPO, &format!("Work on {branch}"), branch, "main").unwrap();
        (p.number, self.forge.pr_url(OWNER, REPO, p.number))
    }
    fn set_checks(&self, n: u64, runs: &[CheckRun]) {
        self.forge.set_checks(OWNER, REPO, n, runs, &[]).unwrap();
    }
    fn merge_puts(&self) -> usize {
        self.forge.requests().iter().filter(|r| r.starts_with("PUT") && r.ends_with("/merge")).count()
    }
}

/// Agent effects are recorded (starts succeed); PR effects go to the forge.
struct PipelineRunner {
    scm: ScmClient,
    rec: RecordingRunner,
}

impl EffectRunner for PipelineRunner {
    fn run<'a>(&'a self, effect: &'a Effect) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            match scm::run_effect(&self.scm, effect).await {
                Some(o) => o,
                None => self.rec.run(effect).await,
            }
        })
    }
}

struct World {
    town: Town,
    clock: ManualClock,
    rig: String,
    runner: PipelineRunner,
    net: Net,
}

async fn world(rig: RigOverrides) -> World {
    let clock = ManualClock::new(T0);
    let net = start_forge(&clock).await;
    world_on(net, clock, rig, None)
}

fn world_on(net: Net, clock: ManualClock, rig: RigOverrides, scm: Option<ScmClient>) -> World {
    let opts = TownOptions { town_id: "town-1".into(), seed: 42 };
    let mut town = Town::open(open_in_memory().unwrap(), Arc::new(clock.clone()), opts).unwrap();
    let rig = town
        .add_rig(AddRig {
            id: Some("rig-1".into()),
            name: "app".into(),
            git_url: format!("https://github.com/{OWNER}/{REPO}.git"),
            default_branch: None,
            config: rig,
        })
        .unwrap()
        .id;
    let scm = scm.unwrap_or_else(|| net.client());
    World { town, clock, rig, runner: PipelineRunner { scm, rec: RecordingRunner::new() }, net }
}

fn review_off() -> RigOverrides {
    RigOverrides { code_review: Some(false), ..Default::default() }
}

impl World {
    /// Working agents heart-beat and report SDK activity (they are alive), then a tick.
    async fn tick(&mut self) -> TickReport {
        let now = self.town.now();
        for a in self.town.agents().unwrap() {
            if a.status == gastown::model::AgentStatus::Working {
                let wm =
                    Watermark { last_event_type: Some("tool".into()), last_event_at: Some(now), active_tools: None };
                self.town.heartbeat(&a.agent_id, &wm, None).unwrap();
            }
        }
        self.town.tick(&self.runner).await.unwrap().unwrap()
    }
    /// Let the poll interval pass, then tick.
    async fn poll_tick(&mut self) -> TickReport {
        self.clock.advance_ms(61 * SECOND_MS);
        self.tick().await
    }
    fn status(&mut self, id: &str) -> BeadStatus {
        self.town.bead(id).unwrap().status
    }
    fn review_int(&self, mr: &str, col: &str) -> Option<i64> {
        self.town
            .conn()
            .query_row(&format!("SELECT {col} FROM review_metadata WHERE bead_id = ?1"), [mr], |r| r.get(0))
            .unwrap()
    }
    fn events_of(&self, ty: &str, mr: &str) -> i64 {
        self.town
            .conn()
            .query_row("SELECT COUNT(*) FROM town_events WHERE event_type = ?1 AND bead_id = ?2", [ty, mr], |r| {
                r.get(0)
            })
            .unwrap()
    }
    fn issues_labelled(&mut self, label: &str) -> Vec<gastown::town::Bead> {
        self.town.beads_of(BeadType::Issue, None).unwrap().into_iter().filter(|b| b.has_label(label)).collect()
    }
    fn polecat_of(&mut self, bead: &str) -> String {
        let a = self.town.agents().unwrap().into_iter().find(|a| a.current_hook_bead_id.as_deref() == Some(bead));
        a.unwrap_or_else(|| panic!("no agent hooked to {bead}")).agent_id
    }

    /// Sling an issue; its polecat opens a PR and calls gt_done; with code
    /// review off the MR is fast-tracked, so the next tick polls it.
    /// Returns (source, mr, PR number, PR url).
    async fn issue_with_pr(&mut self, branch: &str) -> (String, String, u64, String) {
        let (slung, _) = self
            .town
            .sling_bead(SlingBead { rig_id: self.rig.clone(), title: format!("Task {branch}"), ..Default::default() })
            .unwrap();
        let polecat = slung.agent_id.unwrap();
        let (n, url) = self.net.open_pr(branch);
        self.done(&polecat, branch, Some(&url)).await;
        let mr = self.mr_of(&slung.bead_id);
        self.tick().await;
        (slung.bead_id, mr, n, url)
    }

    async fn done(&mut self, agent: &str, branch: &str, pr_url: Option<&str>) {
        let report =
            DoneReport { branch: branch.into(), pr_url: pr_url.map(str::to_owned), summary: None, bead_id: None };
        self.town.agent_done(agent, report).unwrap();
        self.clock.advance_ms(5 * SECOND_MS);
        self.tick().await;
    }

    fn mr_of(&mut self, source: &str) -> String {
        let mrs = self.town.beads_of(BeadType::MergeRequest, None).unwrap();
        mrs.into_iter().rev().find(|m| m.meta_str("source_bead_id") == Some(source)).expect("an MR").bead_id
    }

    fn forge_state(&self, n: u64) -> gastown::forge::Pull {
        self.net.forge.pull(OWNER, REPO, n).unwrap()
    }
}

// ------------------------------------------------------------ the client alone

#[tokio::test]
async fn client_reads_status_and_classifies_every_error() {
    let clock = ManualClock::new(T0);
    let net = start_forge(&clock).await;
    let c = net.client();
    let (n, url) = net.open_pr("gt/one");
    let s = c.check_pr_status(&url).await.unwrap();
    assert_eq!(
        (s.state, s.mergeable_state.as_deref(), s.head_branch.as_deref()),
        (PrState::Open, Some("clean"), Some("gt/one"))
    );

    let path = format!("/pulls/{n}");
    for (status, transient) in [(500, true), (503, true), (429, true), (401, false), (403, false), (422, false)] {
        net.forge.add_fault(Fault::new(FaultKind::Status { status }).on("GET", &path).times(1));
        match c.check_pr_status(&url).await.unwrap_err() {
            ScmError::HttpError { status: s, transient: t, .. } => assert_eq!((s, t), (status, transient)),
            e => panic!("{status}: {e:?}"),
        }
    }
    let missing = net.forge.pr_url(OWNER, REPO, 999);
    assert!(matches!(
        c.check_pr_status(&missing).await,
        Err(ScmError::HttpError { status: 404, transient: false, .. })
    ));

    net.forge.add_fault(Fault::new(FaultKind::InvalidJson).path(&path).times(1));
    assert!(matches!(
        c.check_pr_status(&url).await,
        Err(ScmError::InvalidResponse { invalid: InvalidKind::JsonParse, .. })
    ));
    net.forge.add_fault(Fault::new(FaultKind::SchemaMismatch).path(&path).times(1));
    match c.check_pr_status(&url).await.unwrap_err() {
        ScmError::InvalidResponse { invalid: InvalidKind::SchemaMismatch, sample_keys } => {
            assert!(sample_keys.contains(&"api_version".to_owned()), "{sample_keys:?}")
        }
        e => panic!("{e:?}"),
    }
    let wrong_token = net.client_with(|c| c.github_token = Some("nope".into()));
    assert!(matches!(wrong_token.check_pr_status(&url).await, Err(ScmError::HttpError { status: 401, .. })));
    let no_token = net.client_with(|c| c.github_token = None);
    assert_eq!(no_token.check_pr_status(&url).await.unwrap_err().kind(), "no_token");
    for bad in ["https://ghe.example/acme/app/pull/1", "https://github.com/acme/app/issues/1", "not a url"] {
        assert_eq!(c.check_pr_status(bad).await.unwrap_err().kind(), "unrecognized_url", "{bad}");
    }
    let gl = c.check_pr_status("https://gitlab.evil/acme/app/-/merge_requests/1").await.unwrap_err();
    assert_eq!(gl.kind(), "host_mismatch");

    // A forge that is down: no answer, its own class (logged, never counted).
    let down = ScmClient::new(net.http.clone(), ScmConfig::for_forge("http://127.0.0.1:1", "github.com", Some(TOKEN)));
    assert_eq!(down.check_pr_status(&url).await.unwrap_err().kind(), "network");
    // https needs TLS, which the HTTP stack does not speak yet: a network error, not a panic.
    let tls = ScmClient::new(net.http.clone(), ScmConfig { github_token: Some(TOKEN.into()), ..Default::default() });
    assert_eq!(tls.check_pr_status(&url).await.unwrap_err().kind(), "network");
}

#[tokio::test]
async fn gitlab_merge_requests_are_read_with_the_private_token() {
    let clock = ManualClock::new(T0);
    let net = start_forge(&clock).await;
    let (n, _) = net.open_pr("gt/gl");
    let c = net.client_with(|cfg| {
        cfg.gitlab_token = Some(TOKEN.into());
        cfg.gitlab_instance_url = Some("https://git.acme.test".into());
        cfg.gitlab_api_url = Some(net.base.clone());
    });
    let url = format!("https://git.acme.test/{OWNER}/{REPO}/-/merge_requests/{n}");
    let s = c.check_pr_status(&url).await.unwrap();
    assert_eq!((s.state, s.mergeable_state), (PrState::Open, None));
    net.forge.merge_from_outside(OWNER, REPO, n).unwrap();
    assert_eq!(c.check_pr_status(&url).await.unwrap().state, PrState::Merged);
    assert_eq!(c.check_pr_feedback(&url).await, None, "feedback is GitHub only");
}

#[tokio::test]
async fn feedback_reads_threads_checks_and_legacy_status() {
    let clock = ManualClock::new(T0);
    let net = start_forge(&clock).await;
    let c = net.client();
    let (n, url) = net.open_pr("gt/fb");
    let f = c.check_pr_feedback(&url).await.unwrap();
    assert!(f.all_green(), "no CI and no threads is green: {f:?}");

    for kind in [ThreadKind::Approval, ThreadKind::Lgtm, ThreadKind::BotStatus] {
        net.forge.add_thread(OWNER, REPO, n, kind, None).unwrap();
    }
    let f = c.check_pr_feedback(&url).await.unwrap();
    assert!(!f.has_unresolved_comments && f.all_green(), "approvals do not block: {f:?}");
    net.forge.add_thread(OWNER, REPO, n, ThreadKind::Blocking, None).unwrap();
    assert!(c.check_pr_feedback(&url).await.unwrap().has_unresolved_comments);
    net.forge.resolve_threads(OWNER, REPO, n).unwrap();
    assert!(!c.check_pr_feedback(&url).await.unwrap().has_unresolved_comments);

    net.set_checks(n, &[CheckRun::completed("ci", "success"), CheckRun::pending("lint")]);
    let f = c.check_pr_feedback(&url).await.unwrap();
    assert!(!f.all_checks_pass && !f.has_failing_checks, "{f:?}");
    net.set_checks(n, &[CheckRun::completed("ci", "failure"), CheckRun::completed("lint", "skipped")]);
    let f = c.check_pr_feedback(&url).await.unwrap();
    assert!(f.has_failing_checks && !f.all_checks_pass && f.needs_work());
    let many: Vec<CheckRun> = (0..101).map(|i| CheckRun::completed(&format!("c{i}"), "success")).collect();
    net.set_checks(n, &many);
    let f = c.check_pr_feedback(&url).await.unwrap();
    assert!(f.has_unchecked_runs && !f.all_checks_pass, "more than 100 runs cannot all be inspected");
    let legacy = gastown::forge::CommitStatus { context: "ci/legacy".into(), state: "error".into() };
    net.forge.set_checks(OWNER, REPO, n, &[CheckRun::completed("ci", "success")], &[legacy]).unwrap();
    let f = c.check_pr_feedback(&url).await.unwrap();
    assert!(f.has_failing_checks && !f.all_checks_pass, "legacy error status fails: {f:?}");

    net.forge.set_checks(OWNER, REPO, n, &[], &[]).unwrap();
    net.forge.set_review_decision(OWNER, REPO, n, Some("CHANGES_REQUESTED")).unwrap();
    assert!(c.check_pr_feedback(&url).await.unwrap().changes_requested);
    net.forge.set_review_decision(OWNER, REPO, n, Some("REVIEW_REQUIRED")).unwrap();
    assert!(c.check_pr_feedback(&url).await.unwrap().awaiting_approval);
    net.forge.set_review_decision(OWNER, REPO, n, None).unwrap();

    // Malformed halves leave conservative defaults, never a panic.
    net.forge.add_fault(Fault::new(FaultKind::InvalidJson).on("POST", "/graphql").times(1));
    let f = c.check_pr_feedback(&url).await.unwrap();
    assert!(!f.reviews_known && !f.all_green(), "an unknown review state is not green: {f:?}");
    net.forge.add_fault(Fault::new(FaultKind::SchemaMismatch).path("/check-runs").times(1));
    assert!(!c.check_pr_feedback(&url).await.unwrap().all_checks_pass);
    net.forge.add_fault(Fault::new(FaultKind::Status { status: 502 }).path("/status").times(1));
    assert!(!c.check_pr_feedback(&url).await.unwrap().all_checks_pass);
    assert!(c.check_pr_feedback(&url).await.unwrap().all_green());
}

#[tokio::test]
async fn merge_fallback_tries_squash_then_merge_then_rebase_on_not_allowed_only() {
    let clock = ManualClock::new(T0);
    let net = start_forge(&clock).await;
    let c = net.client();
    let set = |squash, merge, rebase| {
        let s = RepoSettings { allow_squash: squash, allow_merge: merge, allow_rebase: rebase, ..Default::default() };
        net.forge.set_repo_settings(OWNER, REPO, &s).unwrap();
    };
    for (i, (allowed, want)) in
        [((true, true, true), "squash"), ((false, true, true), "merge"), ((false, false, true), "rebase")]
            .into_iter()
            .enumerate()
    {
        set(allowed.0, allowed.1, allowed.2);
        let (n, url) = net.open_pr(&format!("gt/m{i}"));
        net.forge.clear_requests();
        assert_eq!(c.merge_pr(&url).await.unwrap(), want);
        assert_eq!(net.merge_puts(), i + 1, "one PUT per method tried");
        let p = net.forge.pull(OWNER, REPO, n).unwrap();
        assert!(p.merged && p.merge_method.as_deref() == Some(want));
    }
    // All disabled: three attempts, then false.
    set(false, false, false);
    let (_, url) = net.open_pr("gt/none");
    net.forge.clear_requests();
    assert!(c.merge_pr(&url).await.unwrap_err().contains("every merge method"));
    assert_eq!(net.merge_puts(), 3);
}

#[tokio::test]
async fn merge_fallback_stops_at_any_other_refusal() {
    let clock = ManualClock::new(T0);
    let net = start_forge(&clock).await;
    let c = net.client();
    // 405 "not mergeable" (a conflict) is not "not allowed": no second method.
    let (n, url) = net.open_pr("gt/dirty");
    net.forge.push(OWNER, REPO, "main", true).unwrap();
    net.forge.clear_requests();
    let e = c.merge_pr(&url).await.unwrap_err();
    assert!(e.contains("405"), "{e}");
    assert_eq!(net.merge_puts(), 1);
    assert!(!net.forge.pull(OWNER, REPO, n).unwrap().merged);
    // A 5xx: also no fallback.
    let (_, url) = net.open_pr("gt/flaky");
    net.forge.add_fault(Fault::new(FaultKind::Status { status: 503 }).on("PUT", "/merge").times(1));
    net.forge.clear_requests();
    assert!(c.merge_pr(&url).await.is_err());
    assert_eq!(net.merge_puts(), 1);
}

#[tokio::test]
async fn create_branch_is_idempotent_and_skips_without_token() {
    let clock = ManualClock::new(T0);
    let net = start_forge(&clock).await;
    let c = net.client();
    let git = format!("https://github.com/{OWNER}/{REPO}.git");
    c.create_branch(&git, "main", "convoy/x/head").await.unwrap();
    let main = net.forge.branch_sha(OWNER, REPO, "main").unwrap();
    assert_eq!(net.forge.branch_sha(OWNER, REPO, "convoy/x/head").unwrap(), main);
    c.create_branch(&git, "main", "convoy/x/head").await.unwrap();
    let no_token = net.client_with(|c| c.github_token = None);
    assert!(matches!(no_token.create_branch(&git, "main", "b").await, Err(scm::BranchError::Skipped(_))));
    assert!(matches!(
        c.create_branch("https://gitlab.com/a/b.git", "main", "b").await,
        Err(scm::BranchError::Skipped(_))
    ));
}

#[tokio::test]
async fn control_api_over_http_drives_the_forge() {
    let clock = ManualClock::new(T0);
    let net = start_forge(&clock).await;
    let (n, url) = net.open_pr("gt/ctl");
    let ctl = |p: &str| format!("{}/_control/repos/{OWNER}/{REPO}/pulls/{n}/{p}", net.base);
    let ok = |r: gastown::net::HttpResponse| assert!(r.ok(), "{} {}", r.status, r.text());
    ok(net.http.post(ctl("threads")).json(&serde_json::json!({"kind": "blocking"})).send().await.unwrap());
    ok(net
        .http
        .post(ctl("checks"))
        .json(&serde_json::json!({"runs": [{"name": "ci", "status": "completed", "conclusion": "failure"}]}))
        .send()
        .await
        .unwrap());
    let f = net.client().check_pr_feedback(&url).await.unwrap();
    assert!(f.has_unresolved_comments && f.has_failing_checks);
    let fault = serde_json::json!({"kind": {"type": "status", "status": 503}, "path_contains": "/pulls/", "count": 1});
    ok(net.http.post(format!("{}/_control/faults", net.base)).json(&fault).send().await.unwrap());
    assert!(net.client().check_pr_status(&url).await.is_err());
    ok(net.http.post(ctl("close")).send().await.unwrap());
    assert_eq!(net.client().check_pr_status(&url).await.unwrap().state, PrState::Closed);
    let r = net.http.get(format!("{}/_control/requests", net.base)).send().await.unwrap();
    assert!(r.text().contains("/graphql"));
}

// ------------------------------------------------------------ poll thresholds

#[tokio::test]
async fn nine_transient_errors_then_one_invalid_response_do_not_fail_but_three_invalid_do() {
    let mut w = world(review_off()).await;
    let (_, mr, n, _) = w.issue_with_pr("gt/flaky").await;
    w.net.set_checks(n, &[CheckRun::pending("ci")]); // never green: no auto-merge in the way
    let path = format!("/pulls/{n}");
    w.net.forge.add_fault(Fault::new(FaultKind::Status { status: 503 }).on("GET", &path).times(9));
    for i in 1..=9 {
        w.poll_tick().await;
        assert_eq!(w.review_int(&mr, "poll_transient_count"), Some(i));
    }
    w.net.forge.add_fault(Fault::new(FaultKind::InvalidJson).on("GET", &path).times(1));
    w.poll_tick().await;
    assert_eq!(w.status(&mr), BeadStatus::InProgress, "9 transient + 1 invalid is not a failure");
    assert_eq!(
        (w.review_int(&mr, "poll_transient_count"), w.review_int(&mr, "poll_non_transient_count")),
        (Some(0), Some(1))
    );
    // A success resets both counters.
    w.poll_tick().await;
    assert_eq!(w.review_int(&mr, "poll_non_transient_count"), Some(0));
    w.net.forge.add_fault(Fault::new(FaultKind::SchemaMismatch).on("GET", &path).times(3));
    w.poll_tick().await;
    w.poll_tick().await;
    assert_eq!(w.status(&mr), BeadStatus::InProgress);
    w.poll_tick().await;
    assert_eq!(w.status(&mr), BeadStatus::Failed, "three invalid responses in a row fail the MR");
    let b = w.town.bead(&mr).unwrap();
    assert_eq!(
        (b.meta_str("failureReason"), b.meta_str("failureKind")),
        (Some("pr_poll_failed"), Some("invalid_response"))
    );
}

#[tokio::test]
async fn ten_transient_errors_fail_the_mr() {
    let mut w = world(review_off()).await;
    let (_, mr, n, _) = w.issue_with_pr("gt/down").await;
    w.net.set_checks(n, &[CheckRun::pending("ci")]);
    w.net.forge.add_fault(Fault::new(FaultKind::Status { status: 429 }).on("GET", &format!("/pulls/{n}")));
    for _ in 0..9 {
        w.poll_tick().await;
    }
    assert_eq!(w.status(&mr), BeadStatus::InProgress);
    w.poll_tick().await;
    assert_eq!(w.status(&mr), BeadStatus::Failed);
}

#[tokio::test]
async fn a_404_fails_at_once_and_an_unreachable_forge_never_does() {
    let mut w = world(review_off()).await;
    let (_, mr, n, _) = w.issue_with_pr("gt/gone").await;
    w.net.forge.add_fault(Fault::new(FaultKind::Status { status: 404 }).on("GET", &format!("/pulls/{n}")).times(1));
    w.poll_tick().await;
    assert_eq!(w.status(&mr), BeadStatus::Failed);
    let b = w.town.bead(&mr).unwrap();
    assert_eq!(b.meta_str("failureKind"), Some("http_error"));
    assert!(b.meta_str("failureMessage").unwrap().contains("not found"));

    // A forge nobody can reach: polls are logged, no counter moves.
    let clock = ManualClock::new(T0);
    let net = start_forge(&clock).await;
    let down = ScmClient::new(net.http.clone(), ScmConfig::for_forge("http://127.0.0.1:1", "github.com", Some(TOKEN)));
    let mut w = world_on(net, clock, review_off(), Some(down));
    let (_, mr, _, _) = w.issue_with_pr("gt/dark").await;
    for _ in 0..12 {
        w.poll_tick().await;
    }
    assert_eq!(w.status(&mr), BeadStatus::InProgress);
    assert_eq!(w.review_int(&mr, "poll_transient_count"), Some(0));
}

#[tokio::test]
async fn a_pr_url_of_an_unknown_host_fails_the_mr_at_once() {
    let mut w = world(review_off()).await;
    let (slung, _) =
        w.town.sling_bead(SlingBead { rig_id: w.rig.clone(), title: "t".into(), ..Default::default() }).unwrap();
    w.done(&slung.agent_id.unwrap(), "gt/x", Some("https://ghe.example/acme/app/pull/1")).await;
    let mr = w.mr_of(&slung.bead_id);
    w.tick().await;
    w.poll_tick().await;
    assert_eq!(w.status(&mr), BeadStatus::Failed);
    assert_eq!(w.town.bead(&mr).unwrap().meta_str("failureKind"), Some("unrecognized_url"));
}

// ------------------------------------------------------------ auto-merge timer

#[tokio::test]
async fn auto_merge_fires_only_after_continuous_green_and_flapping_checks_reset_the_timer() {
    // New-town defaults: auto-merge after 5 min of green. Auto-resolve is off
    // here so red CI does not also open a feedback bead.
    let mut w = world(RigOverrides { auto_resolve_pr_feedback: Some(false), ..review_off() }).await;
    let (source, mr, n, _) = w.issue_with_pr("gt/green").await;
    w.net.set_checks(n, &[CheckRun::completed("ci", "success")]);
    w.poll_tick().await;
    let first_green = w.review_int(&mr, "auto_merge_ready_since").expect("timer started");
    w.poll_tick().await;
    w.poll_tick().await;
    // Checks flap red: the timer resets.
    w.net.set_checks(n, &[CheckRun::completed("ci", "failure")]);
    w.poll_tick().await;
    assert_eq!(w.review_int(&mr, "auto_merge_ready_since"), None);
    w.net.set_checks(n, &[CheckRun::completed("ci", "success")]);
    w.poll_tick().await;
    let green_since = w.review_int(&mr, "auto_merge_ready_since").unwrap();
    assert!(green_since > first_green);
    // Polls until the merge; it must come only after 5 continuous green minutes.
    let mut merged_at = None;
    for _ in 0..12 {
        w.poll_tick().await;
        if w.forge_state(n).merged && merged_at.is_none() {
            merged_at = Some(w.town.now().0);
        }
        if w.status(&mr) == BeadStatus::Closed {
            break;
        }
    }
    let merged_at = merged_at.expect("auto-merged");
    assert!(merged_at - green_since >= 5 * MINUTE_MS, "merged {} ms after green", merged_at - green_since);
    assert!(merged_at - first_green > 5 * MINUTE_MS + 3 * 61 * SECOND_MS, "the early green did not count");
    assert_eq!(w.forge_state(n).merge_method.as_deref(), Some("squash"));
    assert_eq!(w.status(&mr), BeadStatus::Closed);
    assert_eq!(w.status(&source), BeadStatus::Closed);
}

#[tokio::test]
async fn a_regression_seen_by_the_pre_merge_check_clears_the_pending_flag() {
    let mut w = world(review_off()).await;
    let (_, mr, n, _) = w.issue_with_pr("gt/recheck").await;
    for _ in 0..7 {
        w.poll_tick().await;
        if w.review_int(&mr, "auto_merge_pending") == Some(1) || w.events_of("pr_auto_merge", &mr) > 0 {
            break;
        }
    }
    assert!(w.events_of("pr_auto_merge", &mr) > 0, "green for the delay");
    // CI turns red before the merge runs: merge_pr's fresh check refuses.
    w.net.set_checks(n, &[CheckRun::completed("ci", "failure")]);
    w.clock.advance_ms(5 * SECOND_MS);
    let r = w.tick().await;
    assert!(r.effects.iter().any(|e| matches!(e, Effect::MergePr { .. })), "{:?}", r.effects);
    assert!(!w.forge_state(n).merged);
    assert_eq!((w.review_int(&mr, "auto_merge_pending"), w.review_int(&mr, "auto_merge_ready_since")), (Some(0), None));
}

#[tokio::test]
async fn a_rework_bead_blocking_the_mr_keeps_it_from_auto_merging() {
    let mut w = world(RigOverrides::default()).await;
    let (slung, _) =
        w.town.sling_bead(SlingBead { rig_id: w.rig.clone(), title: "t".into(), ..Default::default() }).unwrap();
    let (n, url) = w.net.open_pr("gt/rw");
    w.done(&slung.agent_id.unwrap(), "gt/rw", Some(&url)).await;
    let mr = w.mr_of(&slung.bead_id);
    w.clock.advance_ms(5 * SECOND_MS);
    w.tick().await; // refinery dispatched on the MR
    let refinery = w.polecat_of(&mr);
    let rework = w.town.request_changes(&refinery, "rename the function", &[]).unwrap();
    for _ in 0..10 {
        w.poll_tick().await;
        assert_eq!(w.review_int(&mr, "auto_merge_ready_since"), None, "never green while rework is open");
    }
    assert!(!w.forge_state(n).merged);
    assert_eq!(w.status(&rework), BeadStatus::InProgress);
}

// ------------------------------------------------------------ bug (j)

#[tokio::test]
async fn bug_j_pr_merged_between_status_and_feedback_check_creates_no_feedback_bead() {
    let mut w = world(review_off()).await;
    let (_, mr, n, _) = w.issue_with_pr("gt/race").await;
    w.net.forge.add_thread(OWNER, REPO, n, ThreadKind::Blocking, None).unwrap();
    // The feedback check is slow; a human merges the PR meanwhile.
    w.net.forge.add_fault(Fault::new(FaultKind::Delay { ms: 300 }).on("POST", "/graphql").times(1));
    let forge = w.net.forge.clone();
    let merger = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        forge.merge_from_outside(OWNER, REPO, n).unwrap();
    });
    let r = w.poll_tick().await;
    merger.await.unwrap();
    assert!(r.effects.iter().any(|e| matches!(e, Effect::PollPr { .. })));
    assert_eq!(w.events_of("pr_feedback_detected", &mr), 0, "the re-check saw the merge");
    w.poll_tick().await;
    w.clock.advance_ms(5 * SECOND_MS);
    w.tick().await;
    assert!(w.issues_labelled(labels::PR_FEEDBACK).is_empty());
    assert_eq!(w.status(&mr), BeadStatus::Closed, "the next poll saw the merge");
}

// ------------------------------------------------------------ conflicts

#[tokio::test]
async fn conflict_bead_or_escalation_by_setting() {
    for auto_resolve in [true, false] {
        let rig = RigOverrides { auto_resolve_merge_conflicts: Some(auto_resolve), ..review_off() };
        let mut w = world(rig).await;
        let (_, mr, n, _) = w.issue_with_pr("gt/conflict").await;
        w.poll_tick().await;
        w.net.forge.push(OWNER, REPO, "main", true).unwrap(); // the base moves under the PR
        w.poll_tick().await;
        w.poll_tick().await;
        w.poll_tick().await;
        assert_eq!(w.events_of("pr_conflict_detected", &mr), 1, "once per dirty episode");
        assert_eq!(w.review_int(&mr, "has_conflicts"), Some(1));
        let conflict_beads = w.issues_labelled(labels::PR_CONFLICT);
        let escalations = w.town.beads_of(BeadType::Escalation, None).unwrap();
        if auto_resolve {
            assert_eq!(conflict_beads.len(), 1);
            assert!(escalations.is_empty());
            // The polecat rebases and force-pushes; a clean poll clears the flag.
            w.net.forge.push(OWNER, REPO, "gt/conflict", false).unwrap();
            let fixer = w.polecat_of(&conflict_beads[0].bead_id);
            w.done(&fixer, "gt/conflict", None).await;
            w.poll_tick().await;
            assert_eq!(w.review_int(&mr, "has_conflicts"), Some(0));
            assert_eq!(w.status(&conflict_beads[0].bead_id), BeadStatus::Closed);
        } else {
            assert!(conflict_beads.is_empty());
            assert_eq!(escalations.len(), 1);
            assert!(escalations[0].title.contains("gt/conflict"));
        }
        assert!(!w.forge_state(n).merged, "never merged while dirty");
    }
}

#[tokio::test]
async fn unknown_mergeable_state_skips_the_poll() {
    let mut w = world(review_off()).await;
    let (_, mr, n, _) = w.issue_with_pr("gt/unknown").await;
    let since = w.review_int(&mr, "auto_merge_ready_since");
    assert!(since.is_some(), "the first poll saw a green PR");
    w.net.forge.set_mergeable_override(OWNER, REPO, n, Some("unknown")).unwrap();
    for _ in 0..8 {
        w.poll_tick().await;
    }
    assert_eq!(w.review_int(&mr, "auto_merge_ready_since"), since, "unknown touches no timer");
    assert_eq!(w.events_of("pr_auto_merge", &mr), 0);
    assert!(!w.forge_state(n).merged);
    assert_eq!(w.status(&mr), BeadStatus::InProgress);
}

#[tokio::test]
async fn awaiting_approval_is_recorded_with_its_first_observation() {
    let mut w = world(review_off()).await;
    let (_, mr, n, _) = w.issue_with_pr("gt/approve").await;
    w.net.forge.set_review_decision(OWNER, REPO, n, Some("REVIEW_REQUIRED")).unwrap();
    w.poll_tick().await;
    let seen = w.review_int(&mr, "awaiting_approval_observed_at").unwrap();
    w.poll_tick().await;
    assert_eq!(w.review_int(&mr, "awaiting_approval"), Some(1));
    assert_eq!(w.review_int(&mr, "awaiting_approval_observed_at"), Some(seen), "not rewritten every poll");
    w.net.forge.set_review_decision(OWNER, REPO, n, Some("APPROVED")).unwrap();
    w.poll_tick().await;
    assert_eq!(
        (w.review_int(&mr, "awaiting_approval"), w.review_int(&mr, "awaiting_approval_observed_at")),
        (Some(0), None)
    );
}

#[tokio::test]
async fn a_pr_closed_without_merge_fails_the_review_and_reopens_the_source() {
    let mut w = world(review_off()).await;
    let (source, mr, n, _) = w.issue_with_pr("gt/closed").await;
    w.net.forge.close_pull(OWNER, REPO, n).unwrap();
    w.poll_tick().await;
    w.clock.advance_ms(5 * SECOND_MS);
    w.tick().await;
    assert_eq!(w.status(&mr), BeadStatus::Failed);
    assert!(matches!(w.status(&source), BeadStatus::Open | BeadStatus::InProgress), "reopened for another attempt");
}

// ------------------------------------------------------------ the whole lifecycle

#[tokio::test]
async fn pr_lifecycle_review_feedback_fix_green_auto_merge_and_convoy_progress() {
    let mut w = world(RigOverrides::default()).await; // code review on, comments mode, auto-resolve, 5 min delay
    let created = w
        .town
        .sling_convoy(SlingConvoy {
            rig_id: w.rig.clone(),
            title: "Two things".into(),
            tasks: vec![
                ConvoyTask { title: "first".into(), ..Default::default() },
                ConvoyTask { title: "second".into(), ..Default::default() },
            ],
            merge_mode: Some(MergeMode::ReviewAndMerge),
            staged: Some(false),
            metadata: Default::default(),
        })
        .unwrap();
    let task = created.bead_ids[0].clone();
    w.clock.advance_ms(5 * SECOND_MS);
    w.tick().await; // Rule 1 dispatches polecats
    let polecat = w.polecat_of(&task);

    // The polecat pushes, opens a PR with CI still running, and calls gt_done.
    let (n, url) = w.net.open_pr("gt/first");
    w.net.set_checks(n, &[CheckRun::pending("ci")]);
    w.done(&polecat, "gt/first", Some(&url)).await;
    let mr = w.mr_of(&task);
    assert_eq!(w.status(&task), BeadStatus::InReview);

    // The refinery reviews the PR: one blocking comment, then gt_done with the URL.
    w.clock.advance_ms(5 * SECOND_MS);
    w.tick().await;
    let refinery = w.polecat_of(&mr);
    w.net.forge.add_thread(OWNER, REPO, n, ThreadKind::Blocking, None).unwrap();
    w.net.forge.add_thread(OWNER, REPO, n, ThreadKind::BotStatus, None).unwrap();
    w.done(&refinery, "gt/first", Some(&url)).await;
    assert_eq!(w.status(&mr), BeadStatus::InProgress);

    // Polling finds the comment: one feedback bead blocks the MR.
    let mut feedback = Vec::new();
    for _ in 0..4 {
        w.poll_tick().await;
        feedback = w.issues_labelled(labels::PR_FEEDBACK);
        if !feedback.is_empty() {
            break;
        }
    }
    assert_eq!(feedback.len(), 1, "one feedback bead");
    let fb = feedback[0].bead_id.clone();
    assert!(feedback[0].title.contains(&format!("PR #{n}")), "{}", feedback[0].title);
    w.poll_tick().await;
    w.poll_tick().await;
    assert_eq!(w.issues_labelled(labels::PR_FEEDBACK).len(), 1, "never a second one while it is open");

    // A polecat addresses it: pushes to the PR branch, resolves the thread, gt_done.
    let fixer = w.polecat_of(&fb);
    w.net.forge.push(OWNER, REPO, "gt/first", false).unwrap();
    w.net.forge.resolve_threads(OWNER, REPO, n).unwrap();
    w.net.set_checks(n, &[CheckRun::pending("ci")]);
    w.done(&fixer, "gt/first", None).await;
    assert_eq!(w.status(&fb), BeadStatus::Closed);
    assert!(!w.forge_state(n).merged);

    // CI goes green on the new head; after 5 green minutes the PR auto-merges.
    w.net.set_checks(n, &[CheckRun::completed("ci", "success")]);
    for _ in 0..12 {
        w.poll_tick().await;
        if w.status(&mr) == BeadStatus::Closed {
            break;
        }
    }
    assert!(w.forge_state(n).merged);
    assert_eq!(w.status(&mr), BeadStatus::Closed);
    assert_eq!(w.status(&task), BeadStatus::Closed);
    let convoy = w.town.convoy_meta(&created.convoy_id).unwrap();
    assert_eq!((convoy.closed_beads, convoy.total_beads), (1, 2), "convoy progress counted the merge");
}
