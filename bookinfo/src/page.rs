//! productpage's HTML: the landing page and the product page with its details, reviews and
//! stars (filled stars in the rating's colour, `text-<color>-500`, then empty ones).

use serde_json::Value;

use crate::web::html_escape;

pub const CSS: &str = r#"
body { margin: 0; font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2937; background: #f9fafb; }
nav { display: flex; justify-content: space-between; align-items: center; padding: 12px 24px; background: #1e293b; color: #fff; }
nav a { color: #fff; text-decoration: none; }
nav .brand { font-size: 20px; font-weight: 600; }
nav form { display: inline-flex; gap: 6px; }
nav input { padding: 4px 6px; border-radius: 4px; border: 0; }
nav button, nav summary { background: #3b82f6; color: #fff; border: 0; border-radius: 4px; padding: 5px 12px; cursor: pointer; list-style: none; }
nav details[open] summary { display: none; }
main { max-width: 1000px; margin: 0 auto; padding: 24px; }
h1 { margin-top: 0; }
.summary { font-size: 17px; line-height: 1.5; }
.columns { display: grid; grid-template-columns: 1fr 1fr; gap: 32px; margin-top: 24px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 6px 16px; }
dt { font-weight: 600; }
blockquote { margin: 0 0 18px; padding: 10px 16px; border-left: 4px solid #cbd5e1; background: #fff; }
blockquote small { display: block; color: #64748b; margin-top: 6px; }
.stars { font-size: 20px; letter-spacing: 2px; }
.text-black-500 { color: #111827; }
.text-red-500 { color: #ef4444; }
.empty { color: #d1d5db; }
.error { color: #dc2626; }
.served { color: #64748b; font-size: 13px; }
"#;

pub fn landing() -> String {
    r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Simple Bookstore App</title><link rel="stylesheet" href="static/bookinfo.css"></head>
<body><nav><a class="brand" href="productpage">BookInfo Sample</a></nav>
<main>
<h1>Hello! This is a simple bookstore application consisting of three services as shown below</h1>
<table>
<tr><th>name</th><td>http://details:9080</td></tr>
<tr><th>endpoint</th><td>details</td></tr>
<tr><th>children</th><td>details, reviews (reviews calls ratings)</td></tr>
</table>
<p>Click on one of the links below to auto generate a request to the backend as a real user or a tester</p>
<p><a href="/productpage?u=normal">Normal user</a></p>
<p><a href="/productpage?u=test">Test user</a></p>
</main></body></html>
"#
    .to_string()
}

fn user_box(user: Option<&str>) -> String {
    match user {
        Some(u) => format!(
            r#"<span class="user">Signed in as <b id="signed-in-user">{}</b> &middot; <a href="logout">Sign out</a></span>"#,
            html_escape(u)
        ),
        None => r#"<details><summary>Sign in</summary><form method="post" action="login">
<input type="text" name="username" placeholder="User Name" required> <input type="password" name="passwd" placeholder="Password">
<button type="submit">Sign in</button></form></details>"#
            .to_string(),
    }
}

fn stars(n: i64, color: &str) -> String {
    let filled = n.clamp(0, 5);
    let class = format!("text-{}-500", html_escape(color));
    let mut s = String::from(r#"<span class="stars">"#);
    for _ in 0..filled {
        s.push_str(&format!(r#"<span class="{class}">&#9733;</span>"#));
    }
    for _ in filled..5 {
        s.push_str(r#"<span class="empty">&#9734;</span>"#);
    }
    s.push_str("</span>");
    s
}

fn details_html(status: u16, d: &Value) -> String {
    if status != 200 {
        return format!(
            r#"<h4 class="error">Error fetching product details!</h4><p class="error">{}</p>"#,
            html_escape(
                d["error"].as_str().unwrap_or("Sorry, product details are currently unavailable for this book.")
            )
        );
    }
    let field = |k: &str| match &d[k] {
        Value::String(s) => html_escape(s),
        Value::Null => String::new(),
        v => html_escape(&v.to_string()),
    };
    format!(
        "<h4>Book Details</h4><dl><dt>Type:</dt><dd>{}</dd><dt>Pages:</dt><dd>{}</dd><dt>Publisher:</dt><dd>{}</dd>\
         <dt>Language:</dt><dd>{}</dd><dt>ISBN-10:</dt><dd>{}</dd><dt>ISBN-13:</dt><dd>{}</dd></dl>",
        field("type"),
        field("pages"),
        field("publisher"),
        field("language"),
        field("ISBN-10"),
        field("ISBN-13"),
    )
}

fn reviews_html(status: u16, r: &Value) -> String {
    if status != 200 {
        return format!(
            r#"<h4 class="error">Error fetching product reviews!</h4><p class="error">{}</p>"#,
            html_escape(
                r["error"].as_str().unwrap_or("Sorry, product reviews are currently unavailable for this book.")
            )
        );
    }
    let mut s = String::from("<h4>Book Reviews</h4>");
    for review in r["reviews"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "<blockquote><p>{}</p><small>{}</small>",
            html_escape(review["text"].as_str().unwrap_or("")),
            html_escape(review["reviewer"].as_str().unwrap_or(""))
        ));
        let rating = &review["rating"];
        if let Some(n) = rating["stars"].as_i64() {
            s.push_str(&stars(n, rating["color"].as_str().unwrap_or("black")));
        } else if let Some(e) = rating["error"].as_str() {
            s.push_str(&format!(r#"<p class="error">{}</p>"#, html_escape(e)));
        }
        s.push_str("</blockquote>");
    }
    let pod = r["podname"].as_str().unwrap_or("");
    let cluster = r["clustername"].as_str().unwrap_or("null");
    let on_cluster =
        if cluster != "null" { format!(" on cluster <u>{}</u>", html_escape(cluster)) } else { String::new() };
    s.push_str(&format!(r#"<p class="served">Reviews served by: <u>{}</u>{on_cluster}</p>"#, html_escape(pod)));
    s
}

pub fn product_page(user: Option<&str>, product: &Value, details: (u16, &Value), reviews: (u16, &Value)) -> String {
    format!(
        r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Simple Bookstore App</title><link rel="stylesheet" href="static/bookinfo.css"></head>
<body>
<nav><a class="brand" href="productpage">BookInfo Sample</a>{}</nav>
<main>
<h1 id="title">{}</h1>
<p class="summary">{}</p>
<div class="columns"><section id="details">{}</section><section id="reviews">{}</section></div>
</main></body></html>
"#,
        user_box(user),
        html_escape(product["title"].as_str().unwrap_or("")),
        product["descriptionHtml"].as_str().unwrap_or(""),
        details_html(details.0, details.1),
        reviews_html(reviews.0, reviews.1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stars_in_the_rating_colour_then_empty_ones() {
        let s = stars(4, "red");
        assert_eq!(s.matches(r#"class="text-red-500">&#9733;"#).count(), 4);
        assert_eq!(s.matches("&#9734;").count(), 1);
        assert_eq!(stars(5, "black").matches("text-black-500").count(), 5);
    }

    #[test]
    fn reviews_without_ratings_have_no_stars_and_errors_show() {
        let v1 = json!({"podname": "reviews-v1", "clustername": "null", "reviews": [{"reviewer": "Reviewer1", "text": "t"}]});
        let html = reviews_html(200, &v1);
        assert!(!html.contains("&#9733;") && html.contains("Reviews served by: <u>reviews-v1</u>"));
        assert!(!html.contains("on cluster"));
        let err = json!({"reviews": [{"reviewer": "R", "text": "t", "rating": {"error": "Ratings service is currently unavailable"}}], "podname": "p", "clustername": "east"});
        let html = reviews_html(200, &err);
        assert!(html.contains("Ratings service is currently unavailable") && html.contains("on cluster <u>east</u>"));
        let failed =
            reviews_html(503, &json!({"error": "Sorry, product reviews are currently unavailable for this book."}));
        assert!(failed.contains("Error fetching product reviews!</h4>"), "Istio's heading, with its exclamation mark");
        assert!(failed.contains("Sorry, product reviews are currently unavailable for this book."));
        assert!(details_html(555, &json!({"error": "x"})).contains("Error fetching product details!</h4>"));
    }

    #[test]
    fn user_names_are_escaped() {
        assert!(user_box(Some("<script>")).contains("&lt;script&gt;"));
        assert!(user_box(None).contains(r#"action="login""#));
    }
}
