module github.com/reready-verify/caddy-reready-verify/integration/browser

go 1.26.0

require (
	github.com/chromedp/cdproto v0.159.0
	github.com/chromedp/chromedp v0.23.0
	github.com/reready-verify/caddy-reready-verify v0.0.0
)

require github.com/go-json-experiment/json v0.0.0-20260213210345-44df1a37e875 // indirect

// The shared integration harness (internal/rrtest/harness) is the root
// module's, from this working tree.
replace github.com/reready-verify/caddy-reready-verify => ../..
