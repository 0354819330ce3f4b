package rereadyverify

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"github.com/reready-verify/caddy-reready-verify/internal/verify"
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// This file is the deliveries page: a handler that serves an HTML page
// (ui/, embedded) and, beneath it, the same operations as the admin API
// (serveOps, through the routes of routes.go), so an operator can look at
// the journal and the queue in a browser and retry or drop queued
// deliveries. The admin endpoint refuses browser requests by design; this
// handler sits on a route the user protects with their own authentication.

func init() {
	caddy.RegisterModule(UI{})
	httpcaddyfile.RegisterHandlerDirective("reready_ui", parseUICaddyfile)
	// Right after reready_verify, which sorts right after forward_auth:
	// plugins can only be ordered against standard directives, and
	// request_header follows forward_auth there.
	httpcaddyfile.RegisterDirectiveOrder("reready_ui", httpcaddyfile.Before, "request_header")
}

//go:embed ui
var uiFiles embed.FS

// UI serves the deliveries page and its JSON API. It is terminal: put it
// on a route of its own, behind authentication (basic_auth, forward_auth):
//
//	ops.example.com {
//		basic_auth {
//			ops $2a$14$...
//		}
//		reready_ui
//	}
//
// The page is served at any path of the route that ends in "/" (a path
// without the slash is redirected to it); beneath it, relative to the
// page, so that `handle` and `handle_path` prefixes both work:
//
//	GET    ui.js, ui.css, favicon.svg       the page's script, style, icon
//	GET    api/deliveries?return_id=&state=&outcome=&test=&limit=&after=
//	GET    api/deliveries?since=&until=&cursor=&…   a range, from the history too
//	GET    api/deliveries/<id>              one delivery: its entries, and its body when kept
//	GET    api/summary                      counters and per-minute chart data, last hour
//	POST   api/replay                       put past deliveries back on the queue
//	GET    api/queue
//	POST   api/queue/<id>/retry
//	DELETE api/queue/<id>
//
// (and every other route of routes.go: the page's API is the admin API).
//
// The API answers exactly what the admin API's /reready/... answers,
// through the same routes (opsMux, routes.go): another method on one of
// these paths is refused 405 with Allow, an unknown api/<op> 404, both
// in JSON. POST and DELETE are refused (403) unless the request
// is same-origin (Sec-Fetch-Site, or else Origin against Host), so another
// site cannot make an operator's browser, which holds the credentials,
// change the queue. Every response carries a strict Content-Security-Policy
// (scripts and styles from the same origin only, no framing),
// X-Content-Type-Options: nosniff and Referrer-Policy: no-referrer. No
// secret, token, MAC or signature is ever served: the journal, the
// history and the queue's views hold none. A delivery's body is served
// (api/deliveries/<id>) only when the history keeps bodies, to whoever
// may load the page: protect it as you would the app.
//
// Caddyfile: `reready_ui` takes no arguments and no block. It sorts right
// after reready_verify.
type UI struct {
	csrf *http.CrossOriginProtection
}

// CaddyModule returns the Caddy module information.
func (UI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.reready_ui",
		New: func() caddy.Module { return new(UI) },
	}
}

// Provision prepares the handler; the page is rendered once per process.
func (u *UI) Provision(caddy.Context) error {
	u.csrf = http.NewCrossOriginProtection()
	_, err := uiAssets()
	return err
}

// Headers on every response of the page and its API.
var uiHeaders = map[string]string{
	"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
		"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
	"X-Content-Type-Options":       "nosniff",
	"Referrer-Policy":              "no-referrer",
	"X-Frame-Options":              "DENY",
	"Cross-Origin-Resource-Policy": "same-origin",
}

// ServeHTTP serves the page, its files and its API; it never calls next.
func (u *UI) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	hdr := w.Header()
	for k, v := range uiHeaders {
		hdr.Set(k, v)
	}
	if api, ok := uiAPI(r); ok {
		return u.serveAPI(w, api)
	}
	segs := strings.Split(r.URL.Path, "/")
	assets, err := uiAssets()
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	name := segs[len(segs)-1]
	a, ok := assets[name] // "" is the page
	if !ok {
		if strings.Contains(name, ".") || r.Method != http.MethodGet && r.Method != http.MethodHead {
			return caddyhttp.Error(http.StatusNotFound, fmt.Errorf("reready_ui: no %s", clip(name)))
		}
		// The page's URLs are relative to it, so it must be served at a
		// path ending in "/": /ops becomes /ops/, relative to the path
		// the browser sees, whatever prefix the route stripped.
		loc := "./" + url.PathEscape(name) + "/"
		if r.URL.RawQuery != "" {
			loc += "?" + r.URL.RawQuery
		}
		hdr.Set("Location", loc)
		w.WriteHeader(http.StatusFound)
		return nil
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		hdr.Set("Allow", "GET, HEAD")
		return caddyhttp.Error(http.StatusMethodNotAllowed, fmt.Errorf("reready_ui: method %s not allowed", clip(r.Method)))
	}
	hdr.Set("Content-Type", a.contentType)
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("ETag", a.etag)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.data))
	return nil
}

// uiAPI finds the page's API in r's path and returns the request beneath
// its api segment, for opsMux. The page may be mounted under any prefix
// (`handle /ops/*`, `handle_path`), so the API is found from the end:
// api/<a>/<b>/<c> or api/<a>/<b> when opsMux has a route for it
// (api/queue/<id>/retry, api/queue/<id>), else api/<a>, a known operation
// or a 404 in JSON. Any other path is the page's or one of its files,
// under a prefix that may hold an api segment of its own (/api/ops/ui.js).
func uiAPI(r *http.Request) (*http.Request, bool) {
	segs := strings.Split(r.URL.Path, "/")
	n := len(segs)
	for k := 3; k >= 1; k-- { // segments after api
		i := n - 1 - k
		if i < 1 || segs[i] != "api" {
			continue
		}
		api := beneath(r, strings.Join(segs[:i+1], "/"))
		if k == 1 && segs[n-1] != "" || opsRouted(api) {
			return api, true
		}
	}
	return nil, false
}

// serveAPI answers an operation with serveOps, refusing cross-origin
// mutations first. Errors are JSON ({"error": "..."}), as the admin API's,
// since the page's script reads them.
func (u *UI) serveAPI(w http.ResponseWriter, r *http.Request) error {
	if err := u.csrf.Check(r); err != nil {
		writeOpsError(w, opsErrorf(http.StatusForbidden, "refused: this operation must come from the page itself (same origin)"))
		return nil
	}
	if err := serveOps(w, r); err != nil {
		writeOpsError(w, err)
	}
	return nil
}

func writeOpsError(w http.ResponseWriter, e *opsError) {
	data, _ := json.Marshal(map[string]string{"error": e.msg})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(e.status)
	_, _ = w.Write(append(data, '\n'))
}

// uiAsset is a file of the page, ready to serve.
type uiAsset struct {
	data        []byte
	contentType string
	etag        string
}

// uiAssets renders the page once: index.html is a template filled with
// the documented states and the outcomes, so the page's filters list
// them without a second copy in the script. The key "" is the page.
var uiAssets = sync.OnceValues(func() (map[string]uiAsset, error) {
	types := map[string]string{
		"ui.js":       "text/javascript; charset=utf-8",
		"ui.css":      "text/css; charset=utf-8",
		"favicon.svg": "image/svg+xml",
	}
	out := make(map[string]uiAsset, len(types)+1)
	add := func(name string, data []byte, ct string) {
		sum := sha256.Sum256(data)
		out[name] = uiAsset{data: data, contentType: ct, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
	}
	for name, ct := range types {
		data, err := uiFiles.ReadFile("ui/" + name)
		if err != nil {
			return nil, fmt.Errorf("reready_ui: %v", err)
		}
		add(name, data, ct)
	}
	tpl, err := template.ParseFS(uiFiles, "ui/index.html")
	if err != nil {
		return nil, fmt.Errorf("reready_ui: %v", err)
	}
	var page bytes.Buffer
	if err := tpl.Execute(&page, uiPageData()); err != nil {
		return nil, fmt.Errorf("reready_ui: %v", err)
	}
	add("", page.Bytes(), "text/html; charset=utf-8")
	return out, nil
})

// uiState is a documented state as the page's filter and timeline use it.
type uiState struct {
	Name string
	// Rank orders states along a return's life: the four pending_* states
	// in the vendor's order, then the three terminal ones (failed,
	// not_returned, complete) all last. A state arriving after one of a
	// higher rank is out of order.
	Rank int
}

func uiPageData() any {
	states := make([]uiState, len(verify.States))
	for i, s := range verify.States {
		states[i] = uiState{Name: s, Rank: min(i, verify.StateIndex(verify.StateFailed))}
	}
	return struct {
		States   []uiState
		Outcomes []string
	}{states, Outcomes}
}

func parseUICaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var u UI
	err := u.UnmarshalCaddyfile(h.Dispenser)
	return &u, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	reready_ui [<matcher>]
func (u *UI) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.Errf("reready_ui takes no arguments besides a matcher; got %q", d.Val())
	}
	if d.NextBlock(0) {
		return d.Errf("reready_ui takes no options; got %q", d.Val())
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*UI)(nil)
	_ caddyhttp.MiddlewareHandler = (*UI)(nil)
	_ caddyfile.Unmarshaler       = (*UI)(nil)
)
