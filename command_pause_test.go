package rereadyverify

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// caddy reready pause, pause --status and resume, through a real HTTP
// admin endpoint: the body carries the path, the table shows what is
// paused, and a pause without queue is the gateway's 409.
func TestCommandPause(t *testing.T) {
	a := testApp(t)
	addr, _, _ := fakeAdmin(t, a)
	o := adminOptions{Address: addr}

	var out bytes.Buffer
	err := runPause(pauseOptions{adminOptions: o, Action: "pause", Path: "/hook"}, &out)
	if err == nil || !strings.Contains(err.Error(), "pause needs queue on") || !strings.Contains(err.Error(), "HTTP 409") {
		t.Fatalf("pause without queue: %v", err)
	}

	a.queueOn = true
	out.Reset()
	if err := runPause(pauseOptions{adminOptions: o, Action: "pause", Path: "/hook"}, &out); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, "paused /hook") || !strings.Contains(s, "PAUSED PATH") || !strings.Contains(s, "127.0.0.1:") {
		t.Fatalf("pause:\n%s", s)
	}
	out.Reset()
	if err := runPause(pauseOptions{adminOptions: o, Action: "status", JSON: true}, &out); err != nil {
		t.Fatal(err)
	}
	var s PauseState
	if err := json.Unmarshal(out.Bytes(), &s); err != nil || len(s.Paused) != 1 || s.Paused[0].Path != "/hook" {
		t.Fatalf("status --json: %v %s", err, out.String())
	}
	out.Reset()
	if err := runPause(pauseOptions{adminOptions: o, Action: "pause"}, &out); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := runPause(pauseOptions{adminOptions: o, Action: "resume", Path: "/hook"}, &out); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, "resumed /hook") || !strings.Contains(s, "every path is still paused") {
		t.Fatalf("resume of one path under a pause of every path:\n%s", s)
	}
	out.Reset()
	if err := runPause(pauseOptions{adminOptions: o, Action: "resume"}, &out); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, "resumed every path") || !strings.Contains(s, "nothing is paused") {
		t.Fatalf("resume:\n%s", s)
	}
	if err := runPause(pauseOptions{adminOptions: o, Action: "status", Path: "/x"}, &out); err == nil {
		t.Fatal("--status with --path: no error")
	}
}
