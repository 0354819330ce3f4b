package integration

import (
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// Every Caddyfile example in the README adapts. Snippets that start with
// the directive are wrapped in a site; the syntax summary and the examples
// that need a third-party module (Redis storage, the exec event handler)
// are skipped.
func TestReadmeCaddyfilesAdapt(t *testing.T) {
	data, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := strings.Split(string(data), "```caddy\n")[1:]
	if len(blocks) < 5 {
		t.Fatalf("found %d Caddyfile examples in the README", len(blocks))
	}
	adapted := 0
	for i, b := range blocks {
		src := b[:strings.Index(b, "```")]
		switch {
		case strings.Contains(src, "[<matcher>]"), strings.Contains(src, "storage redis"), strings.Contains(src, " exec "):
			continue
		case strings.HasPrefix(strings.TrimSpace(src), "reready_verify"):
			src = "http://localhost:9080 {\n" + src + "\trespond 204\n}\n"
		}
		if _, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), nil); err != nil {
			t.Errorf("README Caddyfile example %d does not adapt: %v\n%s", i+1, err, src)
		}
		adapted++
	}
	if adapted < 3 {
		t.Fatalf("only %d examples adapted", adapted)
	}
}
