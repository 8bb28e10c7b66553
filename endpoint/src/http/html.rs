//! The dashboard's pages: server-rendered HTML with its one stylesheet and inline SVG,
//! nothing fetched from elsewhere (the machines it runs on may have no internet): the
//! problem list with its filters, a problem's page (summary, chart, backtrace, privacy,
//! bug and comments, incidents, attachment previews) and the sign-in page.
//!
//! Invariants: every value shown is HTML-escaped ([`escape`]); the pages have no script
//! and no inline style (the Content-Security-Policy allows neither); a page asked without
//! a session (or token) is the sign-in page (401), which comes back to it; a page shows
//! its viewer's view only, from the same reads as the JSON API ([`crate::http::api`]);
//! the forms that write are shown to the admin alone ([`crate::http::forms`] takes them).

use std::collections::BTreeMap;
use std::fmt::Write;

use actix_web::{HttpRequest, HttpResponse, web};
use crashmesh_protocol::Frame;
use crashmesh_protocol::similarity::SIMILAR_DISTANCE_MAX;

use crate::error::EndpointError;
use crate::http::api::{
    ATTACHMENT_SERVED_BYTES_MAX, Filter, PrivacyView, attachments_of, given, load_problem,
    privacy_of, select,
};
use crate::http::state::AppState;
use crate::storage::db::{BUG_STATUSES, BugRow, Viewer};
use crate::time::format_time_ms;

/// Attachments previewed inline on a problem's page.
pub const PREVIEWS_MAX: usize = 4;
/// Bytes of one attachment shown inline.
pub const PREVIEW_BYTES_MAX: usize = 16 * 1024;

/// The problem page's privacy section: customers, whether a core is asked, and per
/// report what scrubbing removed and pseudonymized (counts per rule); for the admin, the
/// form that asks for a core.
fn privacy_section(problem_id: &str, view: &PrivacyView, viewer: &Viewer) -> String {
    let mut html = String::from("<section id=\"privacy\"><h2>privacy</h2>");
    let _ = write!(
        html,
        "<p>customers: <span id=\"customers\">{}</span> — core requested: <span id=\"core-requested\">{}</span></p>\
         <table id=\"scrub\"><tr><th>report</th><th>customer</th><th>mode</th><th>removed</th>\
         <th>pseudonymized</th><th>withheld attachments</th><th>cores</th><th>rules</th></tr>",
        if view.customers.is_empty() {
            "-".to_string()
        } else {
            escape(&view.customers.join(", "))
        },
        if view.core_requested { "yes" } else { "no" },
    );
    for report in &view.reports {
        let scrub = &report["scrub"];
        let rules = scrub["rules"]
            .as_object()
            .map(|rules| {
                rules
                    .iter()
                    .map(|(rule, count)| format!("{rule}: {count}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let field = |value: &serde_json::Value| match value {
            serde_json::Value::Null => "-".to_string(),
            serde_json::Value::String(text) => escape(text),
            other => escape(&other.to_string()),
        };
        let _ = write!(
            html,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            field(&report["report_id"])
                .chars()
                .take(16)
                .collect::<String>(),
            field(&report["customer_id"]),
            if scrub.is_null() {
                "internal".to_string()
            } else {
                field(&scrub["mode"])
            },
            field(&scrub["removed"]),
            field(&scrub["replaced"]),
            field(&scrub["dropped_attachments"]),
            field(&scrub["cores"]),
            escape(&rules),
        );
    }
    html.push_str("</table>");
    if !viewer.is_admin() {
        html.push_str("</section>");
        return html;
    }
    // Clusters in customer mode with `cores = "on_request"` answer this.
    let _ = write!(
        html,
        "<form method=\"post\" action=\"/problems/{}/core-request\"><input type=\"hidden\" \
         name=\"requested\" value=\"{}\"> <button type=\"submit\" id=\"core-request\">{}</button></form>",
        escape(problem_id),
        if view.core_requested { "no" } else { "yes" },
        if view.core_requested {
            "stop asking for a core"
        } else {
            "request a core"
        },
    );
    html.push_str("</section>");
    html
}

/// `next` when it is a path of this server (`/…`, not `//host`), else `/`: signing in never
/// sends the browser elsewhere.
pub(crate) fn local_path(next: &str) -> &str {
    let safe = next.starts_with('/')
        && !next.starts_with("//")
        && next.len() <= 512
        && next
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_-.?=&%#".contains(&b));
    if safe { next } else { "/" }
}

fn signin_html(next: &str, message: Option<&str>) -> String {
    let mut body = String::from(
        "<h1>sign in</h1><p>Paste a token: a cluster's token shows that cluster's problems \
         only; the admin token (the endpoint's <code>DATA_DIR/admin.token</code>) shows every \
         cluster's and allows changes.</p>",
    );
    if let Some(message) = message {
        let _ = write!(
            body,
            "<p class=\"error\" id=\"signin-error\">{}</p>",
            escape(message)
        );
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/signin\" id=\"signin-form\"><input type=\"hidden\" \
         name=\"next\" value=\"{}\"><label>token <input type=\"password\" name=\"token\" \
         id=\"token\" size=\"72\" autocomplete=\"off\"></label> <button type=\"submit\" \
         id=\"signin\">sign in</button></form>",
        escape(local_path(next))
    );
    page_html("sign in", &body, None)
}

/// The sign-in page, answered with `status` (401 where a page needed a session).
pub(crate) fn signin_response(
    status: actix_web::http::StatusCode,
    next: &str,
    message: Option<&str>,
) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(signin_html(next, message))
}

/// `GET /signin`.
pub async fn signin_page(request: HttpRequest) -> HttpResponse {
    let next =
        web::Query::<std::collections::HashMap<String, String>>::from_query(request.query_string())
            .ok()
            .and_then(|query| query.get("next").cloned())
            .unwrap_or_default();
    signin_response(actix_web::http::StatusCode::OK, &next, None)
}

/// `GET /static/dashboard.css`: the pages' only style (no inline style: see the
/// Content-Security-Policy).
pub async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .body(STYLE)
}

/// Who a dashboard page is for; `None` without a session (or token).
fn page_viewer(state: &AppState, request: &HttpRequest) -> Option<Viewer> {
    state.caller(request).ok().map(|(viewer, _)| viewer)
}

/// The sign-in page (401) for a page asked without a session; it comes back there after.
fn signin_instead(request: &HttpRequest) -> HttpResponse {
    let next = match request.query_string() {
        "" => request.path().to_string(),
        query => format!("{}?{query}", request.path()),
    };
    signin_response(actix_web::http::StatusCode::UNAUTHORIZED, &next, None)
}

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(character),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{background:#1d2330;color:#fff;padding:10px 20px}header a{color:#fff;text-decoration:none;font-weight:600}\
main{padding:16px 20px}table{border-collapse:collapse;width:100%;background:#fff}\
th,td{border-bottom:1px solid #e2e5ea;padding:4px 8px;text-align:left;vertical-align:top}\
th{background:#eef0f4}code,pre{font:12px/1.35 ui-monospace,monospace}pre{background:#fff;border:1px solid #e2e5ea;padding:8px;overflow:auto;max-height:24em}\
.badge{display:inline-block;padding:0 6px;border-radius:8px;background:#dde3ee;font-size:12px}\
.open{background:#fde2e1}.fixed,.closed{background:#dff3e3}.regression{background:#ffd166}\
form.filters{margin-bottom:12px}form.filters label{margin-right:10px}section{margin:18px 0}\
h2{font-size:16px;margin:0 0 6px}.muted{color:#6b7280}.bar{fill:#3b6fd8}\
.row{display:flex;gap:40px}.error{color:#b42318}\
header form{display:inline;float:right}header .who{float:right;margin-right:10px}";

/// A whole page: the header (who is signed in, and the sign-out button) and `body`.
fn page_html(title: &str, body: &str, viewer: Option<&Viewer>) -> String {
    let who = match viewer {
        None => String::new(),
        Some(viewer) => format!(
            "<form method=\"post\" action=\"/signout\"><button type=\"submit\" id=\"signout\">\
             sign out</button></form><span class=\"who\" id=\"viewer\">{}</span>",
            match viewer {
                Viewer::Admin => "admin".to_string(),
                Viewer::Cluster(cluster) => format!("cluster {}", escape(cluster)),
            }
        ),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} — crashmesh</title>\
         <link rel=\"stylesheet\" href=\"/static/dashboard.css\"></head><body><header>\
         <a href=\"/\">crashmesh endpoint</a>{who}</header><main>{body}</main></body></html>",
        escape(title)
    )
}

fn page(title: &str, body: &str, viewer: &Viewer) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(page_html(title, body, Some(viewer)))
}

fn bug_badge(bug: Option<&BugRow>) -> String {
    match bug {
        None => "<span class=\"badge\">no bug</span>".into(),
        Some(bug) => {
            let mut text = format!(
                "<span class=\"badge {}\">#{} {}</span>",
                escape(&bug.status),
                bug.id,
                escape(&bug.status)
            );
            if bug.regression {
                text.push_str(" <span class=\"badge regression\">regression</span>");
            }
            text
        }
    }
}

fn select_box(name: &str, current: Option<&str>, options: &[(&str, &str)]) -> String {
    let mut out = format!("<select name=\"{name}\">");
    for (value, label) in options {
        let selected = if current.unwrap_or("") == *value {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            out,
            "<option value=\"{}\"{selected}>{}</option>",
            escape(value),
            escape(label)
        );
    }
    out.push_str("</select>");
    out
}

/// `GET /`: the problems the session sees, filters, sorted by last seen or count.
pub async fn index(
    state: web::Data<AppState>,
    request: HttpRequest,
    filter: web::Query<Filter>,
) -> Result<HttpResponse, EndpointError> {
    let Some(viewer) = page_viewer(&state, &request) else {
        return Ok(signin_instead(&request));
    };
    let problems = select(&state, &viewer, &filter)?;
    let mut body = String::new();
    let kinds: Vec<(&str, &str)> = std::iter::once(("", "any kind"))
        .chain(KINDS.iter().map(|kind| (*kind, *kind)))
        .collect();
    let statuses: Vec<(&str, &str)> = [("", "any status"), ("none", "no bug")]
        .into_iter()
        .chain(BUG_STATUSES.iter().map(|status| (*status, *status)))
        .collect();
    let _ = write!(
        body,
        "<form class=\"filters\" method=\"get\" action=\"/\">\
         <label>kind {}</label>\
         <label>cluster <input name=\"cluster\" size=\"12\" value=\"{}\"></label>\
         <label>status {}</label>\
         <label>show {}</label>\
         <label>label <input name=\"label\" size=\"14\" placeholder=\"key=value\" value=\"{}\"></label>\
         <label>sort {}</label>\
         <button type=\"submit\">filter</button></form>",
        select_box("kind", given(&filter.kind), &kinds),
        escape(given(&filter.cluster).unwrap_or("")),
        select_box("status", given(&filter.status), &statuses),
        select_box(
            "interesting",
            given(&filter.interesting),
            &[
                ("true", "interesting"),
                ("false", "uninteresting"),
                ("all", "all")
            ]
        ),
        escape(given(&filter.label).unwrap_or("")),
        select_box(
            "sort",
            given(&filter.sort),
            &[("last_seen", "last seen"), ("count", "count")]
        ),
    );
    let _ = write!(
        body,
        "<p class=\"muted\" id=\"problem-count\">{} problem(s)</p>\
         <table id=\"problems\"><thead><tr><th>problem</th><th>kind</th><th>count</th>\
         <th>nodes</th><th>clusters</th><th>first seen</th><th>last seen</th><th>bug</th></tr></thead><tbody>",
        problems.len()
    );
    for (row, bug) in &problems {
        let what = row.crash_function.as_deref().unwrap_or(&row.reason);
        let _ = write!(
            body,
            "<tr class=\"problem\" data-id=\"{id}\"><td><a href=\"/problems/{id}\">{reason}</a><br>\
             <span class=\"muted\"><code>{what}</code>{hidden}</span></td><td>{kind}</td><td>{count}</td>\
             <td>{nodes}</td><td>{clusters}</td><td>{first}</td><td>{last}</td><td>{bug}</td></tr>",
            id = escape(&row.id),
            reason = escape(&row.reason),
            what = escape(what),
            hidden = if row.interesting {
                String::new()
            } else {
                format!(
                    " · uninteresting ({})",
                    escape(row.uninteresting_rule.as_deref().unwrap_or("rule"))
                )
            },
            kind = escape(row.kind.as_str()),
            count = row.count,
            nodes = row.nodes.len(),
            clusters = row.clusters.len(),
            first = format_time_ms(row.first_seen),
            last = format_time_ms(row.last_seen),
            bug = bug_badge(bug.as_ref()),
        );
    }
    body.push_str("</tbody></table>");
    Ok(page("problems", &body, &viewer))
}

const KINDS: &[&str] = &[
    "core",
    "kernel_oops",
    "kernel_warning",
    "kernel_panic",
    "hung_task",
    "soft_lockup",
    "oom_kill",
    "machine_check",
    "lockdep",
    "segfault_hint",
    "python",
    "java",
    "vm_guest_panic",
];

/// Incidents over time as an inline SVG bar chart: hours when the problem spans at most
/// three days, days otherwise.
pub fn chart_svg(hourly: &BTreeMap<u64, u64>) -> String {
    const WIDTH: f64 = 720.0;
    const HEIGHT: f64 = 140.0;
    let (Some((&first, _)), Some((&last, _))) = (hourly.first_key_value(), hourly.last_key_value())
    else {
        return "<svg id=\"incidents-chart\" width=\"720\" height=\"20\"></svg>".into();
    };
    let (step_hours, label) = if last - first <= 72 {
        (1, "hour")
    } else {
        (24, "day")
    };
    let mut buckets: BTreeMap<u64, u64> = BTreeMap::new();
    for (hour, count) in hourly {
        *buckets.entry(hour / step_hours).or_insert(0) += count;
    }
    let start = first / step_hours;
    let end = last / step_hours;
    let slots = (end - start + 1) as f64;
    let peak = buckets.values().copied().max().unwrap_or(1).max(1) as f64;
    let bar_width = (WIDTH / slots).max(1.0);
    let mut svg = format!(
        "<svg id=\"incidents-chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" \
         viewBox=\"0 0 {} {}\" role=\"img\" aria-label=\"incidents per {label}\">\
         <rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"#fff\" stroke=\"#e2e5ea\"/>",
        WIDTH,
        HEIGHT + 20.0,
        WIDTH,
        HEIGHT + 20.0
    );
    for (bucket, count) in &buckets {
        let x = (bucket - start) as f64 * bar_width;
        let height = (*count as f64 / peak) * (HEIGHT - 10.0);
        let _ = write!(
            svg,
            "<rect class=\"bar\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{height:.1}\">\
             <title>{}: {count}</title></rect>",
            HEIGHT - height,
            (bar_width - 1.0).max(1.0),
            format_time_ms(bucket * step_hours * 3_600_000),
        );
    }
    let _ = write!(
        svg,
        "<text x=\"0\" y=\"{}\" font-size=\"11\">{}</text>\
         <text x=\"{WIDTH}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{} · peak {} per {label}</text></svg>",
        HEIGHT + 15.0,
        format_time_ms(start * step_hours * 3_600_000),
        HEIGHT + 15.0,
        format_time_ms(end * step_hours * 3_600_000),
        peak
    );
    svg
}

fn frame_row(index: usize, frame: &Frame) -> String {
    let location = match (&frame.file, frame.line) {
        (Some(file), Some(line)) => format!("{}:{line}", escape(file)),
        (Some(file), None) => escape(file),
        _ => String::new(),
    };
    let function = match (&frame.function, frame.offset) {
        (Some(function), Some(offset)) => format!("{}+{offset:#x}", escape(function)),
        (Some(function), None) => escape(function),
        (None, Some(offset)) => format!("?? ({offset:#x} in module)"),
        (None, None) => "??".into(),
    };
    format!(
        "<tr class=\"frame\"><td>#{index}</td><td><code>{}</code></td><td><code>{function}</code>{}</td>\
         <td>{}</td><td>{location}</td></tr>",
        frame
            .address
            .map(|address| format!("{address:#x}"))
            .unwrap_or_default(),
        if frame.reliable {
            ""
        } else {
            " <span class=\"muted\">?</span>"
        },
        escape(frame.module.as_deref().unwrap_or("")),
    )
}

fn list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items
        .map(|item| format!("<li>{}</li>", escape(&item)))
        .collect();
    if items.is_empty() {
        "<p class=\"muted\">none</p>".into()
    } else {
        format!("<ul>{}</ul>", items.join(""))
    }
}

/// `GET /problems/{id}`: the problem's page, as the session sees it.
pub async fn problem_page(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, EndpointError> {
    let Some(viewer) = page_viewer(&state, &request) else {
        return Ok(signin_instead(&request));
    };
    let (row, bug, analysis) = load_problem(&state, &viewer, &path)?;
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1 id=\"title\">{}</h1><table id=\"summary\">\
         <tr><th>problem</th><td><code>{}</code></td></tr>\
         <tr><th>signature</th><td><code id=\"signature\">{}</code></td></tr>\
         <tr><th>kind</th><td>{}</td></tr><tr><th>executable</th><td>{}</td></tr>\
         <tr><th>incidents</th><td id=\"count\">{}</td></tr>\
         <tr><th>first seen</th><td>{}</td></tr><tr><th>last seen</th><td>{}</td></tr>\
         <tr><th>interesting</th><td>{}</td></tr><tr><th>bug</th><td>{}</td></tr></table>",
        escape(&row.reason),
        escape(&row.id),
        escape(&row.signature),
        escape(row.kind.as_str()),
        escape(row.executable.as_deref().unwrap_or("-")),
        row.count,
        format_time_ms(row.first_seen),
        format_time_ms(row.last_seen),
        match &row.uninteresting_rule {
            None => "yes".to_string(),
            Some(rule) => format!("no — rule {}", escape(rule)),
        },
        bug_badge(bug.as_ref()),
    );
    let _ = write!(
        body,
        "<section><h2>incidents over time</h2>{}</section>",
        chart_svg(&row.hourly)
    );
    body.push_str(
        "<section><h2>backtrace</h2><table id=\"backtrace\"><thead><tr><th></th><th>address</th>\
                   <th>function</th><th>module</th><th>source</th></tr></thead><tbody>",
    );
    if let Some(problem) = &analysis {
        for (index, frame) in problem.frames.iter().enumerate() {
            body.push_str(&frame_row(index, frame));
        }
    }
    body.push_str("</tbody></table>");
    if let Some(text) = analysis.as_ref().and_then(|problem| problem.text.as_ref()) {
        let _ = write!(body, "<pre id=\"problem-text\">{}</pre>", escape(text));
    }
    body.push_str("</section>");
    let similar = state
        .db
        .similar_view(&viewer, &row.id, SIMILAR_DISTANCE_MAX)?;
    if !similar.is_empty() {
        body.push_str(
            "<section><h2>similar problems</h2><table id=\"similar\"><thead><tr>\
             <th>distance</th><th>problem</th><th>incidents</th><th></th></tr></thead><tbody>",
        );
        for similar in &similar {
            // The admin may decide they are one bug: that one joins this one.
            let merge = if viewer.is_admin() {
                format!(
                    "<form method=\"post\" action=\"/problems/{}/merge\"><input type=\"hidden\" \
                     name=\"from\" value=\"{}\"><button type=\"submit\" class=\"merge\">merge into \
                     this problem</button></form>",
                    escape(&row.id),
                    escape(&similar.row.id)
                )
            } else {
                String::new()
            };
            let _ = write!(
                body,
                "<tr><td>{:.2}</td><td><a href=\"/problems/{}\">{}</a></td><td>{}</td><td>{merge}</td></tr>",
                similar.distance,
                escape(&similar.row.id),
                escape(&similar.row.reason),
                similar.row.count
            );
        }
        body.push_str("</tbody></table></section>");
    }
    let _ = write!(
        body,
        "<section class=\"row\"><div><h2>nodes</h2><div id=\"nodes\">{}</div></div>\
         <div><h2>clusters</h2><div id=\"clusters\">{}</div></div><div><h2>versions</h2>{}</div>\
         <div><h2>labels</h2>{}</div></section>",
        list(row.nodes.iter().cloned()),
        list(row.clusters.iter().cloned()),
        list(row.versions.iter().cloned()),
        list(row.labels.iter().cloned()),
    );
    body.push_str(&privacy_section(
        &row.id,
        &privacy_of(&state, &row)?,
        &viewer,
    ));
    // The bug and its form.
    body.push_str("<section id=\"bug\"><h2>bug</h2>");
    match &bug {
        None => body.push_str("<p class=\"muted\">no bug (uninteresting problems get none)</p>"),
        Some(bug) => {
            let _ = write!(
                body,
                "<p>{} opened {}{}</p><p><b>workaround:</b> <span id=\"workaround\">{}</span></p>",
                bug_badge(Some(bug)),
                format_time_ms(bug.created_ms),
                if bug.regression {
                    " — reopened as a regression"
                } else {
                    ""
                },
                escape(bug.workaround.as_deref().unwrap_or("none yet")),
            );
            if viewer.is_admin() {
                let statuses: Vec<(&str, &str)> = BUG_STATUSES
                    .iter()
                    .map(|status| (*status, *status))
                    .collect();
                let _ = write!(
                    body,
                    "<form method=\"post\" action=\"/problems/{}/bug\" id=\"bug-form\"><label>status {}</label> \
                     <label>workaround <input name=\"workaround\" size=\"50\" value=\"{}\"></label> \
                     <button type=\"submit\">save</button></form>",
                    escape(&row.id),
                    select_box("status", Some(&bug.status), &statuses),
                    escape(bug.workaround.as_deref().unwrap_or("")),
                );
            }
            body.push_str("<h2>comments</h2><table id=\"comments\">");
            let comments = state
                .db
                .bug_view_for(&viewer, bug.id, 100)?
                .map(|view| view.comments)
                .unwrap_or_default();
            for comment in comments.iter().rev() {
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    format_time_ms(comment.time_ms),
                    escape(&comment.author),
                    escape(&comment.text)
                );
            }
            body.push_str("</table>");
        }
    }
    body.push_str("</section>");
    // Incidents.
    body.push_str("<section><h2>latest incidents</h2><table id=\"incidents\"><tr><th>time</th><th>cluster</th>\
                   <th>node</th><th>version</th><th>report</th><th>labels</th></tr>");
    for incident in row.recent.iter().rev().take(50) {
        let labels: Vec<String> = incident
            .labels
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            format_time_ms(incident.time_ms),
            escape(&incident.cluster),
            escape(&incident.node),
            escape(incident.version.as_deref().unwrap_or("-")),
            escape(&incident.report_id),
            escape(&labels.join(" ")),
        );
    }
    body.push_str("</table></section>");
    // Correlated logs and other attachments.
    body.push_str("<section id=\"attachments\"><h2>correlated logs and attachments</h2>");
    let attachments = attachments_of(&state, &row)?;
    if attachments.is_empty() {
        body.push_str("<p class=\"muted\">none</p>");
    }
    let mut previews = 0;
    for (report_id, name, len_bytes) in &attachments {
        let _ = write!(
            body,
            "<p><a href=\"/reports/{}/attachments/{}\">{}</a> <span class=\"muted\">{} bytes</span></p>",
            escape(report_id),
            escape(name),
            escape(name),
            len_bytes
        );
        if previews < PREVIEWS_MAX
            && *len_bytes <= ATTACHMENT_SERVED_BYTES_MAX
            && let Some(report) = state.db.report(report_id)?
            && let Some(attachment) = report.manifest.attachments.iter().find(|a| &a.name == name)
        {
            previews += 1;
            match state
                .blobs
                .read_blob(&attachment.blob, ATTACHMENT_SERVED_BYTES_MAX)
                .await
            {
                Ok(bytes) => {
                    let shown = &bytes[..bytes.len().min(PREVIEW_BYTES_MAX)];
                    let _ = write!(
                        body,
                        "<pre class=\"log\">{}</pre>",
                        escape(&String::from_utf8_lossy(shown))
                    );
                }
                Err(error) => {
                    let _ = write!(
                        body,
                        "<p class=\"muted\">unreadable: {}</p>",
                        escape(&error.to_string())
                    );
                }
            }
        }
    }
    body.push_str("</section>");
    Ok(page(&row.reason, &body, &viewer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn chart_has_one_bar_per_bucket() {
        let hourly = BTreeMap::from([(100, 2), (101, 5), (103, 1)]);
        let svg = chart_svg(&hourly);
        assert_eq!(svg.matches("class=\"bar\"").count(), 3);
        assert!(svg.starts_with("<svg id=\"incidents-chart\""));
    }
}
