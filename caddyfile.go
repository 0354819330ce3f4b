package rereadyverify

import (
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("reready_verify", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("reready_verify", httpcaddyfile.After, "forward_auth")
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
//	    max_body     <size>             # default 64KiB; accepts 1KiB, 1MB, ...
//	    body_timeout <duration>         # max time to read the body, default 10s
//	    replay       off|memory|storage # default memory
//	    mode         enforce|observe    # default enforce
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
				return d.Errf("invalid max_body %q: %v", v, err)
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
