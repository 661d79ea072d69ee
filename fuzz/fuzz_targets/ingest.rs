//! The ingest stream, as `libbanyan_interpose.so` sends it to the agent's socket: a greeting, then
//! frames of `RankMsg`, read as `agent::ingest` reads them (1 MiB frame limit) and applied to
//! `agent::jobs::LocalJobs` as the agent applies them. No panic anywhere on the way, and the jobs'
//! series still render as a valid Prometheus exposition.
#![no_main]

use banyan_agent::jobs::{LocalJobs, Member};
use banyan_protocol::exposition;
use banyan_protocol::frame::{self, Greeting};
use banyan_protocol::ingest::{RankMsg, INGEST_VERSION, MAX_RANK_FRAME};
use banyan_protocol::metric::MetricSet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, mut rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    // Most inputs should get past the greeting: a wrong one is only checked, not the end.
    let _ = Greeting::check(head, INGEST_VERSION);
    let mut jobs = LocalJobs::new();
    let mut current: Option<(String, Member)> = None;
    while let Some((prefix, after)) = rest.split_first_chunk::<4>() {
        let Ok(len) = frame::body_len(*prefix) else {
            break;
        };
        if len > MAX_RANK_FRAME || after.len() < len {
            break;
        }
        let (body, next) = after.split_at(len);
        rest = next;
        match frame::decode_body::<RankMsg>(body) {
            Ok(RankMsg::Hello { job, rank: _ }) => {
                let id = job.jobid.clone();
                if jobs.start(job, 1000, Member::Rank).is_ok() {
                    current = Some((id, Member::Rank));
                }
            }
            Ok(RankMsg::Process { job, rank: _ }) => {
                let id = job.jobid.clone();
                if jobs.start(job, 1000, Member::Process).is_ok() {
                    current = Some((id, Member::Process));
                }
            }
            Ok(RankMsg::Update { delta }) => {
                if let Some((id, _)) = &current {
                    let _ = jobs.update(id, &delta);
                }
            }
            Ok(RankMsg::Exit { how }) => {
                if let Some((id, member)) = current.take() {
                    jobs.end(&id, member, how.crashed());
                }
            }
            Err(_) => break,
        }
    }
    if let Some((id, member)) = current {
        jobs.end(&id, member, true);
    }
    let mut own = MetricSet::new();
    jobs.merge_into(&mut own);
    let _ = jobs.digest();
    let text = exposition::render(&own, &|_| None, &[("node", "cn1")]);
    if let Err(e) = exposition::parse_document(&text) {
        panic!("the jobs' series render an invalid exposition: {e}\n{text}");
    }
});
