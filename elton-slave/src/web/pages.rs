//! The pages, as HTML strings from data already fetched (no IO here).

use elton_proto::control_pb::StatusResponse;
use elton_proto::pb::{NodeInfo, VersionRecord, VolumeInfo};
use elton_proto::{DirManifest, EntryKind};

use super::diff::{Change, MAX_CHANGES};
use super::graph::{Series, VersionPoint, line_chart, version_graph};
use super::html::{bytes, esc, page, seg, time, url_path};

pub fn overview(
    cluster: &str,
    volumes: &[VolumeInfo],
    nodes: &[NodeInfo],
    now_unix: u64,
    wan: &[Series],
    control: Option<&StatusResponse>,
) -> String {
    let mut b = format!("<h1>Cluster {}</h1>", esc(cluster));
    b.push_str("<h2>Volumes</h2><table id=\"volumes\"><tr><th>Volume</th><th>Head</th><th>Home</th><th>Created</th></tr>");
    for v in volumes {
        b.push_str(&format!(
            "<tr><td><a href=\"/ui/volumes/{}\">{}</a></td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            seg(&v.name),
            esc(&v.name),
            if v.head == 0 { "—".to_string() } else { v.head.to_string() },
            esc(&v.home),
            time(v.created_unix)
        ));
    }
    if volumes.is_empty() {
        b.push_str("<tr><td colspan=\"4\" class=\"muted\">no volumes yet</td></tr>");
    }
    b.push_str("</table>");
    b.push_str(&nodes_table(nodes, now_unix));
    b.push_str("<h2>WAN traffic per peer</h2>");
    if wan.iter().all(|s| s.points.is_empty()) {
        b.push_str("<p class=\"muted\">no peer masters, or no sample yet (one every 10 s)</p>");
    } else {
        b.push_str("<p class=\"muted\">bytes exchanged with each peer master since it started, sampled by this slave</p>");
        b.push_str(&line_chart(wan, 900, 240, bytes));
    }
    if let Some(c) = control {
        b.push_str(&control_table(c));
    }
    page(&format!("Cluster {cluster}"), &b)
}

fn nodes_table(nodes: &[NodeInfo], now_unix: u64) -> String {
    let mut b = String::from(
        "<h2>Nodes</h2><table id=\"nodes\"><tr><th>Node</th><th>Address</th><th>Health</th>\
         <th>Objects (recorded)</th><th>Stored</th><th>Last heartbeat</th><th>Failed reads</th>\
         <th>Stale locations</th></tr>",
    );
    for n in nodes {
        let health = if n.up {
            "<span class=\"ok\">up</span>"
        } else {
            "<span class=\"bad\">down</span>"
        };
        let seen = if n.last_seen_unix == 0 {
            "never".to_string()
        } else {
            format!("{} s ago", now_unix.saturating_sub(n.last_seen_unix))
        };
        let stored = if n.stored_objects == 0 && n.stored_bytes == 0 {
            "<span class=\"muted\">not counted yet</span>".to_string()
        } else {
            format!("{} objects, {}", n.stored_objects, bytes(n.stored_bytes))
        };
        b.push_str(&format!(
            "<tr><td>{}</td><td><code>{}</code></td><td>{health}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{stored}</td><td>{seen}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&n.node_id),
            esc(&n.http_addr),
            n.objects,
            n.failed_transfers,
            n.stale_locations
        ));
    }
    b.push_str("</table>");
    b
}

fn control_table(c: &StatusResponse) -> String {
    let mut b = format!(
        "<h2>Control plane</h2><p>leader <b>{}</b>, term {}{}</p><table id=\"control\">\
         <tr><th>Member</th><th>Role</th><th>State</th><th>Applied</th><th>Lag</th></tr>",
        esc(&c.leader),
        c.term,
        if c.initialized {
            ""
        } else {
            " (not initialised)"
        }
    );
    for m in &c.members {
        b.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&m.name),
            esc(&m.role),
            esc(&m.state),
            m.last_applied,
            m.lag
        ));
    }
    b.push_str("</table>");
    b
}

/// Changes of each version against its parent (A/M/D counts), if known.
pub type Summary = Option<(usize, usize, usize, bool)>;

pub fn summarize(changes: &[Change]) -> (usize, usize, usize, bool) {
    let count = |c| changes.iter().filter(|(k, _)| *k == c).count();
    (
        count('A'),
        count('M'),
        count('D'),
        changes.len() >= MAX_CHANGES,
    )
}

pub fn volume(volume: &str, versions: &[(VersionRecord, Summary)]) -> String {
    let mut b = format!(
        "<nav class=\"crumbs\"><a href=\"/\">cluster</a> / {}</nav><h1>Volume {}</h1>",
        esc(volume),
        esc(volume)
    );
    if versions.is_empty() {
        b.push_str("<p class=\"muted\">no version yet</p>");
        return page(volume, &b);
    }
    let points: Vec<VersionPoint> = versions
        .iter()
        .map(|(r, _)| VersionPoint {
            number: r.version,
            parent: r.parent,
            label: format!("{} · {} · {}", r.version, first_line(&r.message), r.author),
            href: format!("/ui/volumes/{}/{}", seg(volume), r.version),
        })
        .collect();
    b.push_str("<h2>History</h2>");
    b.push_str(&version_graph(&points));
    b.push_str(
        "<h2>Versions</h2><table id=\"versions\"><tr><th>Version</th><th>Message</th><th>Author</th>\
         <th>Host</th><th>Time</th><th>Changes</th></tr>",
    );
    for (r, summary) in versions {
        let changes = match summary {
            Some((a, m, d, cut)) => format!(
                "<span class=\"A\">+{a}</span> <span class=\"M\">~{m}</span> <span class=\"D\">−{d}</span>{}",
                if *cut { " (first 500)" } else { "" }
            ),
            None => "<span class=\"muted\">—</span>".into(),
        };
        b.push_str(&format!(
            "<tr class=\"version\"><td><a href=\"/ui/volumes/{v}/{n}\">{n}</a></td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{changes}</td></tr>",
            esc(&r.message),
            esc(&r.author),
            esc(&r.host),
            time(r.time_unix),
            v = seg(volume),
            n = r.version,
        ));
    }
    b.push_str("</table>");
    page(volume, &b)
}

fn first_line(s: &str) -> &str {
    let line = s.lines().next().unwrap_or("");
    match line.char_indices().nth(60) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}

pub fn version(
    volume: &str,
    r: &VersionRecord,
    changes: Option<&[Change]>,
    root: &DirManifest,
) -> String {
    let mut b = format!(
        "<nav class=\"crumbs\"><a href=\"/\">cluster</a> / <a href=\"/ui/volumes/{v}\">{ve}</a> / {n}</nav>\
         <h1>{ve}@{n}</h1><p>{}</p><p class=\"muted\">by {} on {} at {}, parent {}</p>",
        esc(&r.message),
        esc(&r.author),
        esc(&r.host),
        time(r.time_unix),
        if r.parent == 0 {
            "none".to_string()
        } else {
            r.parent.to_string()
        },
        v = seg(volume),
        ve = esc(volume),
        n = r.version,
    );
    b.push_str("<h2>Changes</h2>");
    match changes {
        None => b.push_str("<p class=\"muted\">the parent version is no longer kept</p>"),
        Some([]) => b.push_str("<p class=\"muted\">no change</p>"),
        Some(list) => {
            b.push_str("<table id=\"changes\">");
            for (k, p) in list {
                b.push_str(&format!(
                    "<tr><td class=\"{k}\">{k}</td><td><code>{}</code></td></tr>",
                    esc(p)
                ));
            }
            b.push_str("</table>");
            if list.len() >= MAX_CHANGES {
                b.push_str("<p class=\"muted\">first 500 changes only</p>");
            }
        }
    }
    b.push_str("<h2>Files</h2>");
    b.push_str(&listing(volume, r.version, "", root));
    page(&format!("{volume}@{}", r.version), &b)
}

pub fn tree(volume: &str, version: u64, path: &str, dir: &DirManifest) -> String {
    let b = format!(
        "<nav class=\"crumbs\"><a href=\"/\">cluster</a> / <a href=\"/ui/volumes/{v}\">{ve}</a> / \
         <a href=\"/ui/volumes/{v}/{version}\">{version}</a> / {}</nav><h1>{ve}@{version}:/{}</h1>{}",
        esc(path),
        esc(path),
        listing(volume, version, path, dir),
        v = seg(volume),
        ve = esc(volume),
    );
    page(&format!("{volume}@{version}:/{path}"), &b)
}

fn listing(volume: &str, version: u64, path: &str, dir: &DirManifest) -> String {
    let mut b = String::from(
        "<table id=\"files\"><tr><th>Name</th><th>Size</th><th>Mode</th><th>Modified</th></tr>",
    );
    for e in &dir.entries {
        let rel = if path.is_empty() {
            e.name.clone()
        } else {
            format!("{path}/{}", e.name)
        };
        let name = match e.kind {
            EntryKind::Dir => format!(
                "<a href=\"/ui/volumes/{}/{version}/tree/{}\">{}/</a>",
                seg(volume),
                url_path(&rel),
                esc(&e.name)
            ),
            EntryKind::File => format!(
                "<a href=\"/v1/volumes/{}/{version}/{}\">{}</a>",
                seg(volume),
                url_path(&rel),
                esc(&e.name)
            ),
            EntryKind::Symlink => format!(
                "{} → <code>{}</code>",
                esc(&e.name),
                esc(e.target.as_deref().unwrap_or(""))
            ),
        };
        let size = match e.kind {
            EntryKind::File => bytes(e.size),
            EntryKind::Dir => format!("{} entries", e.size),
            EntryKind::Symlink => String::new(),
        };
        b.push_str(&format!(
            "<tr><td>{name}</td><td class=\"num\">{size}</td><td><code>{:o}</code></td><td>{}</td></tr>",
            e.mode,
            time((e.mtime.max(0) as u64) / 1_000_000_000)
        ));
    }
    if dir.entries.is_empty() {
        b.push_str("<tr><td colspan=\"4\" class=\"muted\">empty directory</td></tr>");
    }
    b.push_str("</table>");
    b
}

pub fn error(status: u16, message: &str) -> String {
    page(
        "Error",
        &format!(
            "<h1>{status}</h1><p>{}</p><p><a href=\"/\">back to the cluster</a></p>",
            esc(message)
        ),
    )
}
