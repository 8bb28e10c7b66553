//! A minimal SVG line plot, written by hand (no plotting dependency): one panel per
//! series, x on a log10 scale (cluster sizes), y linear from zero.

use std::fmt::Write;

const PANEL_WIDTH: f64 = 320.0;
const PANEL_HEIGHT: f64 = 240.0;
const MARGIN: f64 = 50.0;

/// One series: a title and (x, y) points, x > 0.
#[derive(Clone, Debug)]
pub struct Series {
    /// The panel title.
    pub title: String,
    /// The points.
    pub points: Vec<(f64, f64)>,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Panels side by side under a title.
pub fn panels(title: &str, series: &[Series]) -> String {
    let width = series.len().max(1) as f64 * (PANEL_WIDTH + MARGIN) + MARGIN;
    let height = PANEL_HEIGHT + 2.5 * MARGIN;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{MARGIN}" y="20" font-size="14">{}</text>"#,
        escape(title)
    );
    for (index, one) in series.iter().enumerate() {
        let left = MARGIN + index as f64 * (PANEL_WIDTH + MARGIN);
        panel(&mut svg, left, 1.5 * MARGIN, one);
    }
    svg.push_str("</svg>\n");
    svg
}

fn panel(svg: &mut String, left: f64, top: f64, series: &Series) {
    let bottom = top + PANEL_HEIGHT;
    let right = left + PANEL_WIDTH;
    let _ = write!(
        svg,
        r#"<text x="{left}" y="{}">{}</text><line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="black"/>"#,
        top - 8.0,
        escape(&series.title)
    );
    let xs: Vec<f64> = series
        .points
        .iter()
        .map(|(x, _)| x.max(1.0).log10())
        .collect();
    let (x_min, x_max) = xs.iter().fold((f64::MAX, f64::MIN), |(low, high), x| {
        (low.min(*x), high.max(*x))
    });
    let y_max = series
        .points
        .iter()
        .map(|(_, y)| *y)
        .fold(0.0_f64, f64::max)
        .max(1e-9)
        * 1.1;
    let x_span = (x_max - x_min).max(1e-9);
    let to_x = |x: f64| left + 10.0 + (x - x_min) / x_span * (PANEL_WIDTH - 20.0);
    let to_y = |y: f64| bottom - y / y_max * PANEL_HEIGHT;
    for tick in 0..=4 {
        let value = y_max * tick as f64 / 4.0;
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="end">{}</text><line x1="{left}" y1="{y}" x2="{right}" y2="{y}" stroke="#ddd"/>"##,
            left - 4.0,
            to_y(value) + 4.0,
            format_value(value),
            y = to_y(value)
        );
    }
    let mut path = String::new();
    for ((x, (size, y)), separator) in xs
        .iter()
        .zip(&series.points)
        .zip(std::iter::once("M").chain(std::iter::repeat("L")))
    {
        let _ = write!(path, "{separator}{:.1},{:.1} ", to_x(*x), to_y(*y));
        let _ = write!(
            svg,
            r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#1f77b4"/><text x="{:.1}" y="{}" text-anchor="middle">{size}</text><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#1f77b4">{}</text>"##,
            to_x(*x),
            to_y(*y),
            to_x(*x),
            bottom + 14.0,
            to_x(*x),
            to_y(*y) - 6.0,
            format_value(*y)
        );
    }
    let _ = write!(
        svg,
        r##"<path d="{path}" fill="none" stroke="#1f77b4" stroke-width="2"/><text x="{}" y="{}" text-anchor="middle">nodes (log scale)</text>"##,
        (left + right) / 2.0,
        bottom + 30.0
    );
}

fn format_value(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plot_has_one_point_per_value_and_escapes_titles() {
        let svg = panels(
            "a < b",
            &[Series {
                title: "x & y".into(),
                points: vec![(10.0, 1.0), (100.0, 2.0), (1000.0, 4.0)],
            }],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("a &lt; b") && svg.contains("x &amp; y"));
    }
}
