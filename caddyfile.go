package rereadyverify

import (
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("reready_verify", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("reready_verify", httpcaddyfile.After, "forward_auth")
	httpcaddyfile.RegisterGlobalOption("reready", parseGlobalOption)
}

func parseCaddyfile(helper httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var h Handler
	err := h.UnmarshalCaddyfile(helper.Dispenser)
	return &h, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	reready_verify [<matcher>] {
//	    secret       <key> [<key>...]   # repeatable; any configured key may match
//	    token        <value>            # enables the ?token= check
//	    tolerance    <duration>         # max |now - t|, default 5m
//	    max_body     <size>             # default 64KiB; 1KiB = 1024 B, 1KB = 1000 B
//	    body_timeout <duration>         # max time to read the body, default 10s
//	    replay       off|memory|storage # default memory
//	    mode         enforce|observe    # default enforce
//	    queue [{                        # store-and-forward; default off
//	        max_age   <duration>        # give up after this, default 72h
//	        max_items <n>               # pending + dead per storage, default 10000
//	    }]
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.Errf("reready_verify takes no arguments besides a matcher; got %q", d.Val())
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		opt := d.Val()
		if opt != "secret" {
			if seen[opt] {
				val := ""
				if d.NextArg() {
					val = d.Val()
				}
				return d.Errf("duplicate %s option %q: it may be given once", opt, val)
			}
			seen[opt] = true
		}
		switch opt {
		case "secret":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			for _, a := range args {
				if a == "" {
					return d.Err("secret is an empty string")
				}
			}
			h.Secrets = append(h.Secrets, args...)
		case "token":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			if v == "" {
				return d.Err("token is an empty string; remove the option to check no token")
			}
			h.Token = v
		case "tolerance", "body_timeout":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil {
				return d.Errf("invalid %s %q: %v", opt, v, err)
			}
			if dur <= 0 {
				return d.Errf("invalid %s %q: must be positive", opt, v)
			}
			if opt == "tolerance" && dur < time.Second {
				return d.Errf("invalid tolerance %q: must be at least 1s (t counts whole seconds)", v)
			}
			if opt == "tolerance" {
				h.Tolerance = caddy.Duration(dur)
			} else {
				h.BodyTimeout = caddy.Duration(dur)
			}
		case "max_body":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			size, err := humanize.ParseBytes(v)
			if err != nil {
				return d.Errf("invalid max_body %q: want a size such as 65536 (bytes), 64KiB or 1MB; KiB and MiB are powers of 1024, kB and MB of 1000", v)
			}
			if size == 0 || size > 1<<40 {
				return d.Errf("invalid max_body %q: must be between 1 byte and 1TiB", v)
			}
			h.MaxBody = int64(size)
		case "replay":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			switch v {
			case ReplayMemory, ReplayStorage, ReplayOff:
			default:
				return d.Errf("invalid replay %q: want memory, storage or off", v)
			}
			h.Replay = v
		case "queue":
			if d.NextArg() {
				return d.Errf("queue takes no value, only an optional block; got %q", d.Val())
			}
			q, err := unmarshalQueue(d)
			if err != nil {
				return err
			}
			h.Queue = q
		case "mode":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			switch v {
			case ModeEnforce, ModeObserve:
			default:
				return d.Errf("invalid mode %q: want enforce or observe", v)
			}
			h.Mode = v
		default:
			return d.Errf("unknown subdirective %q", opt)
		}
	}
	if len(h.Secrets) == 0 && h.Token == "" {
		return d.Err("reready_verify needs at least one secret or a token")
	}
	return nil
}

// unmarshalQueue reads the optional block of the queue option.
func unmarshalQueue(d *caddyfile.Dispenser) (*QueueConfig, error) {
	q := new(QueueConfig)
	err := eachOption(d, d.Nesting(), "queue", func(opt, v string) error {
		switch opt {
		case "max_age":
			dur, err := caddy.ParseDuration(v)
			if err != nil {
				return d.Errf("invalid queue max_age %q: %v", v, err)
			}
			if dur <= 0 {
				return d.Errf("invalid queue max_age %q: must be positive", v)
			}
			q.MaxAge = caddy.Duration(dur)
		case "max_items":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return d.Errf("invalid queue max_items %q: want a whole number of at least 1", v)
			}
			q.MaxItems = n
		default:
			return d.Errf("unknown queue option %q: want max_age or max_items", opt)
		}
		return nil
	})
	return q, err
}

// parseGlobalOption reads the reready global option, which configures the
// reready app:
//
//	{
//	    reready {
//	        journal_size <n>   # journal entries kept in memory, default 10000
//	        history [{         # the journal in Caddy's storage too; default off
//	            keep <duration>  # default 30d, at least 1h
//	            bodies           # keep bodies and trusted headers; default off
//	        }]
//	    }
//	}
func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	d.Next() // option name
	if d.NextArg() {
		return nil, d.Errf("reready takes no value, only a block; got %q", d.Val())
	}
	app := new(App)
	seen := map[string]bool{}
	for d.NextBlock(0) {
		opt := d.Val()
		if seen[opt] {
			return nil, d.Errf("duplicate reready option %s: it may be given once", opt)
		}
		seen[opt] = true
		switch opt {
		case "journal_size":
			v, err := oneArg(d)
			if err != nil {
				return nil, err
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxJournalSize {
				return nil, d.Errf("invalid journal_size %q: want a whole number from 1 to %d", v, maxJournalSize)
			}
			app.JournalSize = n
		case "history":
			h, err := unmarshalHistory(d)
			if err != nil {
				return nil, err
			}
			app.History = h
		default:
			return nil, d.Errf("unknown reready option %q: want journal_size or history", opt)
		}
	}
	return httpcaddyfile.App{Name: "reready", Value: caddyconfig.JSON(app, nil)}, nil
}

// unmarshalHistory reads the history option and its optional block.
func unmarshalHistory(d *caddyfile.Dispenser) (*HistoryConfig, error) {
	if d.NextArg() {
		return nil, d.Errf("history takes no value, only an optional block; got %q", d.Val())
	}
	h := new(HistoryConfig)
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return nil, d.Errf("duplicate history option %s: it may be given once", opt)
		}
		seen[opt] = true
		switch opt {
		case "keep":
			v, err := oneArg(d)
			if err != nil {
				return nil, err
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil {
				return nil, d.Errf("invalid history keep %q: %v", v, err)
			}
			if dur < time.Hour {
				return nil, d.Errf("invalid history keep %q: want at least 1h (history is kept and removed by the hour)", v)
			}
			h.Keep = caddy.Duration(dur)
		case "bodies":
			if d.NextArg() {
				return nil, d.Errf("history bodies takes no value; got %q", d.Val())
			}
			h.Bodies = true
		default:
			return nil, d.Errf("unknown history option %q: want keep or bodies", opt)
		}
	}
	return h, nil
}

// eachOption runs f on each "<option> <value>" line of the block at
// nesting, refusing a repeated option or a line without exactly one value.
func eachOption(d *caddyfile.Dispenser, nesting int, what string, f func(opt, v string) error) error {
	seen := map[string]bool{}
	for d.NextBlock(nesting) {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("duplicate %s option %s: it may be given once", what, opt)
		}
		seen[opt] = true
		v, err := oneArg(d)
		if err != nil {
			return err
		}
		if err := f(opt, v); err != nil {
			return err
		}
	}
	return nil
}

func oneArg(d *caddyfile.Dispenser) (string, error) {
	opt := d.Val()
	if !d.NextArg() {
		return "", d.ArgErr()
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.Errf("%s takes one value; extra %q", opt, d.Val())
	}
	return v, nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
