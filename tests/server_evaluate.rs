//! The evaluation route on a real port: `POST /evaluate` starts one job on the server's data
//! set (the folder fixture's test split against an index of the tiny model), a second POST while
//! it runs gets 409 naming it, searches are answered meanwhile, the finished job's metrics equal
//! `hashsrv_index::metrics::evaluate` on the same codes, its plots are served as SVG and nothing
//! else of its folder is; a server without a data set refuses with the documented error.

mod server_support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hashsrv::dataset::{Dataset, DatasetKind, OpenOptions, Split};
use hashsrv::index::metrics::{self, EvalConfig, TieMode};
use hashsrv::index::{CodeIndex, CodeMatrix};
use hashsrv::server::routes::EvaluationStarted;
use serde_json::{Value, json};
use server_support::*;

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.expect("answers are JSON"))
}

/// Polls `GET /evaluate/{job}` until the job is no longer running (bounded: a stuck job fails
/// the test instead of hanging it).
async fn wait_for(client: &reqwest::Client, server: &Running, job: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, view) = json_of(client.get(server.url(&format!("/evaluate/{job}"))).send().await.unwrap()).await;
        assert_eq!(status, 200, "{view}");
        if view["status"] != "running" {
            return view;
        }
        assert!(Instant::now() < deadline, "job {job} still running: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every value of `expected` is in `got` (numbers to 1e-12: JSON text round trip).
fn assert_matches(got: &Value, expected: &Value, at: &str) {
    match (got, expected) {
        (Value::Number(g), Value::Number(e)) => {
            let (g, e) = (g.as_f64().unwrap(), e.as_f64().unwrap());
            assert!((g - e).abs() <= 1e-12, "{at}: got {g}, expected {e}");
        }
        (Value::Object(g), Value::Object(e)) => {
            for (key, value) in e {
                assert_matches(g.get(key).unwrap_or(&Value::Null), value, &format!("{at}.{key}"));
            }
        }
        (Value::Array(g), Value::Array(e)) => {
            assert_eq!(g.len(), e.len(), "{at}: lengths");
            for (i, (g, e)) in g.iter().zip(e).enumerate() {
                assert_matches(g, e, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(got, expected, "{at}"),
    }
}

/// The metrics of the folder fixture's test split against `index`, computed here from codes of
/// the encoder's own image path.
fn expected_report(index: &Path, config: &EvalConfig, limit: Option<usize>) -> Value {
    let options = OpenOptions { limit_test: limit, ..OpenOptions::default() };
    let data = Dataset::open(DatasetKind::Folder, &folder_root(), &options).unwrap();
    let items = data.split(Split::Test);
    let images: Vec<_> = items.iter().map(|item| item.load().unwrap()).collect();
    let codes = encoder().encode_images(&images).unwrap();
    let words: Vec<u64> = codes.iter().flat_map(|c| c.words().iter().copied()).collect();
    let labels: Vec<u32> = items.iter().map(|item| item.label).collect();
    let index = CodeIndex::open(index).unwrap();
    let report =
        metrics::evaluate(index.codes(), index.labels(), CodeMatrix::new(index.bits(), &words), &labels, config)
            .unwrap();
    assert_eq!(report.evaluated_queries, items.len(), "every test class is in the index");
    serde_json::to_value(report).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evaluation_job_runs_beside_searches_and_reports_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let reports = dir.path().join("reports");
    let (release, held) = std::sync::mpsc::channel::<()>();
    let state = state(dir.path(), |c| {
        c.evaluation.report_dir = Some(reports.clone());
        c.evaluation.hold = Some(Arc::new(Mutex::new(held)));
        c.evaluation.batch = 2;
    });
    let server = start(Arc::clone(&state)).await;
    let client = reqwest::Client::new();

    // Bad settings are refused before a job starts.
    for body in [json!({"limit": 0}), json!({"precision_at_k": [0]}), json!({"k": [10]}), json!({"ties": ["random"]})] {
        let (status, error) = json_of(client.post(server.url("/evaluate")).json(&body).send().await.unwrap()).await;
        assert_eq!((status, error["error"].as_str()), (400, Some("bad_request")), "{body}: {error}");
    }

    // The job waits at its first image until `release` is dropped.
    let request = json!({"ties": ["index-order", "expected"], "map_at_k": [5], "precision_at_k": [1, 5]});
    let response = client.post(server.url("/evaluate")).json(&request).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let started: EvaluationStarted = response.json().await.unwrap();
    assert_eq!(started.status_url, format!("/evaluate/{}", started.job));
    assert_eq!(location, started.status_url);
    let (status, view) = json_of(client.get(server.url(&started.status_url)).send().await.unwrap()).await;
    assert_eq!((status, view["status"].as_str()), (200, Some("running")), "{view}");
    assert_eq!(view["job"], started.job.as_str());

    let (status, error) = json_of(client.post(server.url("/evaluate")).send().await.unwrap()).await;
    assert_eq!((status, error["error"].as_str()), (409, Some("evaluation_running")), "{error}");
    assert_eq!(error["job"], started.job.as_str(), "the 409 names the running job");

    let search = client.post(server.url("/search?k=3")).body(fixture_image("apples/apples_0.jpg")).send().await;
    assert_eq!(search.unwrap().status(), 200, "searches are answered while a job runs");
    assert_eq!(
        state.metrics.render().lines().find(|l| l.starts_with("hashsrv_evaluations_running ")),
        Some("hashsrv_evaluations_running 1")
    );

    drop(release);
    let view = wait_for(&client, &server, &started.job).await;
    assert_eq!(view["status"], "done", "{view}");
    let test_items =
        Dataset::open(DatasetKind::Folder, &folder_root(), &OpenOptions::default()).unwrap().split(Split::Test).len();
    assert!(test_items >= 3);
    assert_eq!(view["progress"], json!({"done": test_items, "total": test_items}));
    assert!(view["finished"].as_f64().unwrap() >= view["started"].as_f64().unwrap());
    assert_eq!(view["error"], Value::Null);

    let config = EvalConfig {
        ties: vec![TieMode::IndexOrder, TieMode::Expected],
        map_at_k: vec![5],
        precision_at_k: vec![1, 5],
        ..EvalConfig::default()
    };
    let expected = expected_report(&state.config.index, &config, None);
    assert_matches(&view["metrics"], &expected, "metrics");
    assert_eq!(view["metrics"]["dataset"], "folder");
    assert_eq!(view["metrics"]["split"], "test");

    // The report folder holds the same metrics.json.
    let job_dirs: Vec<_> = std::fs::read_dir(&reports).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(job_dirs.len(), 1);
    let written: Value = serde_json::from_slice(&std::fs::read(job_dirs[0].join("metrics.json")).unwrap()).unwrap();
    assert_eq!(written, view["metrics"]);

    let plots: Vec<String> = serde_json::from_value(view["plots"].clone()).unwrap();
    let job = &started.job;
    assert_eq!(plots, [format!("/evaluate/{job}/pr_curve.svg"), format!("/evaluate/{job}/precision_at_k.svg")]);
    for plot in &plots {
        let response = client.get(server.url(plot)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{plot}");
        assert_eq!(response.headers()["content-type"], "image/svg+xml");
        let text = response.text().await.unwrap();
        assert!(text.contains("<svg") && text.contains("</svg>"), "{plot}: {text:.200}");
    }
    // Only the plot names reach the job's folder: not metrics.json beside them, not other paths.
    for path in [
        format!("/evaluate/{job}/metrics.json"),
        format!("/evaluate/{job}/..%2F..%2Ffolder.hidx"),
        "/evaluate/999".to_string(),
        "/evaluate/999/pr_curve.svg".to_string(),
    ] {
        let (status, error) = json_of(client.get(server.url(&path)).send().await.unwrap()).await;
        assert_eq!((status, error["error"].as_str()), (404, Some("not_found")), "{path}: {error}");
    }

    // The next job may start now; a subset of the queries and no PR curve.
    let body = json!({"limit": 2, "pr_curve": false, "precision_at_k": [2]});
    let (status, second) = json_of(client.post(server.url("/evaluate")).json(&body).send().await.unwrap()).await;
    assert_eq!(status, 202, "{second}");
    let second = second["job"].as_str().unwrap().to_string();
    assert_ne!(second, started.job);
    let view = wait_for(&client, &server, &second).await;
    assert_eq!(view["status"], "done", "{view}");
    assert_eq!(view["progress"], json!({"done": 2, "total": 2}));
    assert_eq!(view["plots"], json!([format!("/evaluate/{second}/precision_at_k.svg")]));
    let config = EvalConfig { precision_at_k: vec![2], pr_curve: false, ..EvalConfig::default() };
    assert_matches(&view["metrics"], &expected_report(&state.config.index, &config, Some(2)), "limited metrics");

    let text = client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("hashsrv_evaluations_total{outcome=\"done\"} 2\n"), "{text}");
    assert!(text.contains("hashsrv_evaluations_total{outcome=\"failed\"} 0\n"), "{text}");
    assert!(text.contains("hashsrv_evaluations_running 0\n"), "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_fails_with_its_error_when_the_model_file_changed() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::copy(model_path(), &model).unwrap();
    let state = state(dir.path(), |c| c.model = model.clone());
    let server = start(Arc::clone(&state)).await;
    let client = reqwest::Client::new();
    std::fs::write(&model, b"not the model any more").unwrap();

    let (status, started) = json_of(client.post(server.url("/evaluate")).send().await.unwrap()).await;
    assert_eq!(status, 202, "{started}");
    let view = wait_for(&client, &server, started["job"].as_str().unwrap()).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert!(view["error"].as_str().unwrap().contains("model.onnx"), "{view}");
    assert_eq!(view["metrics"], Value::Null);
    assert_eq!(view["plots"], json!([]));
    // The served model is still the loaded one.
    let search = client.post(server.url("/search")).body(fixture_image("apples/apples_1.png")).send().await;
    assert_eq!(search.unwrap().status(), 200);
    assert!(state.metrics.render().contains("hashsrv_evaluations_total{outcome=\"failed\"} 1\n"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_data_set_evaluation_is_refused_with_how_to_enable_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(state(dir.path(), |c| c.dataset = None)).await;
    let client = reqwest::Client::new();
    let (status, error) = json_of(client.post(server.url("/evaluate")).send().await.unwrap()).await;
    assert_eq!((status, error["error"].as_str()), (409, Some("no_dataset")), "{error}");
    assert!(error["detail"].as_str().unwrap().contains("--dataset"), "{error}");
    let (status, error) = json_of(client.get(server.url("/evaluate/1")).send().await.unwrap()).await;
    assert_eq!((status, error["error"].as_str()), (404, Some("not_found")), "{error}");
    server.stop().await;
}
