//! SVG pictures, computed from plain data (no IO): a volume's version
//! history as a graph, and a line chart of counters over time.

use super::html::esc;

/// One version in the history graph.
pub struct VersionPoint {
    pub number: u64,
    /// 0: none (the first version).
    pub parent: u64,
    pub label: String,
    pub href: String,
}

const ROW: u64 = 30;
const TOP: u64 = 20;
const X: u64 = 24;

/// Versions newest first, one row each; a line joins each version to its
/// parent's row (dashed when the parent is not shown: dropped by
/// retention). Each dot and label links to the version's page.
pub fn version_graph(points: &[VersionPoint]) -> String {
    let height = TOP * 2 + ROW * points.len().saturating_sub(1) as u64;
    let y = |i: usize| TOP + ROW * i as u64;
    let mut edges = String::new();
    let mut nodes = String::new();
    for (i, p) in points.iter().enumerate() {
        match points.iter().position(|q| q.number == p.parent) {
            Some(j) => edges.push_str(&format!(
                "<line x1=\"{X}\" y1=\"{}\" x2=\"{X}\" y2=\"{}\" stroke=\"#4b5563\" stroke-width=\"2\"/>",
                y(i),
                y(j)
            )),
            None if p.parent != 0 => edges.push_str(&format!(
                "<line x1=\"{X}\" y1=\"{}\" x2=\"{X}\" y2=\"{}\" stroke=\"#9ca3af\" stroke-width=\"2\" stroke-dasharray=\"3 3\"/>",
                y(i),
                y(i) + ROW / 2
            )),
            None => {}
        }
        nodes.push_str(&format!(
            "<a href=\"{href}\"><circle class=\"version\" cx=\"{X}\" cy=\"{cy}\" r=\"7\" fill=\"#2563eb\"/>\
             <text x=\"{tx}\" y=\"{ty}\" font-size=\"13\" fill=\"#1d2330\">{label}</text></a>",
            href = esc(&p.href),
            cy = y(i),
            tx = X + 18,
            ty = y(i) + 4,
            label = esc(&p.label),
        ));
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"history\" width=\"100%\" height=\"{height}\" \
         role=\"img\" aria-label=\"version history\">{edges}{nodes}</svg>"
    )
}

/// One line of a chart: (time in seconds, value) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(u64, u64)>,
}

const COLOURS: [&str; 6] = [
    "#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2",
];

/// A line chart of `series` over a shared time axis, with a legend and the
/// value range labelled (`unit` formats values).
pub fn line_chart(
    series: &[Series],
    width: u64,
    height: u64,
    unit: impl Fn(u64) -> String,
) -> String {
    let all = series.iter().flat_map(|s| s.points.iter());
    let (t0, t1) = all
        .clone()
        .fold((u64::MAX, 0), |(a, b), (t, _)| (a.min(*t), b.max(*t)));
    let vmax = all.map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let (left, right, top, bottom) = (70u64, 10u64, 10u64, 40u64);
    let (w, h) = (width - left - right, height - top - bottom);
    let span = t1.saturating_sub(t0).max(1);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" width=\"{width}\" height=\"{height}\" \
         role=\"img\" aria-label=\"chart\">\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{yb}\" stroke=\"#9ca3af\"/>\
         <line x1=\"{left}\" y1=\"{yb}\" x2=\"{xr}\" y2=\"{yb}\" stroke=\"#9ca3af\"/>\
         <text x=\"4\" y=\"{ty}\" font-size=\"11\">{max}</text><text x=\"4\" y=\"{yb}\" font-size=\"11\">0</text>",
        yb = top + h,
        xr = left + w,
        ty = top + 10,
        max = esc(&unit(vmax)),
    );
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|(t, v)| {
                let x = left + (t - t0) * w / span;
                let y = top + h - v.saturating_mul(h) / vmax;
                format!("{x},{y}")
            })
            .collect();
        out.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            pts.join(" ")
        ));
        out.push_str(&format!(
            "<rect x=\"{lx}\" y=\"{ly}\" width=\"10\" height=\"10\" fill=\"{colour}\"/>\
             <text x=\"{tx}\" y=\"{ty}\" font-size=\"11\">{name}</text>",
            lx = left + 160 * i as u64,
            ly = height - 16,
            tx = left + 160 * i as u64 + 14,
            ty = height - 7,
            name = esc(&s.name),
        ));
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(number: u64, parent: u64) -> VersionPoint {
        VersionPoint {
            number,
            parent,
            label: format!("v{number} <msg>"),
            href: format!("/ui/volumes/web/{number}"),
        }
    }

    #[test]
    fn every_version_is_a_linked_dot_joined_to_its_parent() {
        let svg = version_graph(&[p(3, 2), p(2, 1), p(1, 0)]);
        assert_eq!(svg.matches("<circle").count(), 3);
        assert_eq!(svg.matches("<line").count(), 2);
        assert!(svg.contains("href=\"/ui/volumes/web/2\""));
        assert!(svg.contains("v3 &lt;msg&gt;"), "labels are escaped");
        // The oldest shown version's parent was dropped: a dashed stub.
        let svg = version_graph(&[p(5, 4)]);
        assert!(svg.contains("stroke-dasharray"));
    }

    #[test]
    fn chart_scales_points_into_the_frame() {
        let s = [Series {
            name: "peer-b in".into(),
            points: vec![(100, 0), (110, 50), (120, 100)],
        }];
        let svg = line_chart(&s, 400, 200, |v| format!("{v} B"));
        // x from 70 to 390, y from 160 (0) to 10 (max).
        assert!(svg.contains("points=\"70,160 230,85 390,10\""), "{svg}");
        assert!(svg.contains("100 B"));
        assert!(svg.contains("peer-b in"));
    }
}
