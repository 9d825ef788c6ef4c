// Command dabba is the operator's tool: it lists, shows, replays and
// discards dead letters, prints the RabbitMQ definitions of the topology,
// and mints bearer tokens. It reads RABBITMQ_URL, DATABASE_URL (for the
// events waiting behind dead letters) and TOKEN_SECRET like the services.
//
//go:generate go run . definitions -o ../rabbitmq/definitions.json
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/config"
	"github.com/dabba/dabba/shared/dlq"
	"github.com/dabba/dabba/shared/postgres"
	"github.com/dabba/dabba/shared/token"
)

const usage = `dabba: operate Dabba from a terminal.

Usage:
  dabba dlq list [--json]
        every dead-letter queue and how many messages it holds
  dabba dlq show <queue> [-n N] [--json]
        the first N (default 20; 0 for all) dead messages of <queue>'s DLQ:
        id, order, reason, error, routing key, attempts, age and body, and
        the later events of its order that <queue> holds back behind it
        until it is replayed (read from DATABASE_URL; without the database,
        the messages alone and a note on standard error)
  dabba dlq replay <queue> (--id ID [--id ID...] | --older-than DURATION | --all) [--json]
        send the chosen messages back to <queue>, and to it only, as fresh
        messages (same id and routing key); each dead copy is removed only
        once the broker confirmed its replay
  dabba dlq discard <queue> (--id ID [--id ID...] | --older-than DURATION | --all) [--json]
        delete the chosen messages for good
  dabba definitions [-o FILE]
        the topology as a RabbitMQ definitions file (services/rabbitmq/definitions.json)
  dabba token <kind> <subject> [-ttl 24h]
        a bearer token signed with TOKEN_SECRET, printed alone on a line:
        customer <customer_id>, restaurant <restaurant_id>, rider <rider_id>,
        ops <operator_id> or track <order_id>. Without TOKEN_SECRET it signs
        with the development secret of make run's stack (and says so on
        standard error).

<queue> is a work queue (payment, restaurant-notify, email, analytics) or
its DLQ's name (payment.dlq). --older-than takes
a Go duration (90s, 10m, 2h): how long a message has been dead.

Environment:
  RABBITMQ_URL  broker URL(s), comma-separated (default amqp://guest:guest@127.0.0.1:5672/)
  DATABASE_URL  the services' database (dabba dlq show; default postgres://postgres@127.0.0.1:5432/dabba?sslmode=disable)
  TOKEN_SECRET  the services' token secret (dabba token)

Exit status: 0 done; 1 failed, or some chosen messages were not moved
(they stay in the DLQ, listed); 2 bad usage.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	var u usageError
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(os.Stdout, usage)
	case errors.As(err, &u):
		fmt.Fprintf(os.Stderr, "dabba: %v\nRun 'dabba --help' for usage.\n", err)
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "dabba: %v\n", err)
		os.Exit(1)
	}
}

// usageError is a mistake in the command line (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// run runs one command line (without the program name); what is not the
// command's output goes to stderr.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("no command")
	}
	switch args[0] {
	case "-h", "--help", "-help", "help":
		return flag.ErrHelp
	case "definitions":
		return definitions(args[1:], stdout)
	case "token":
		return mintToken(args[1:], getenv, stdout, stderr)
	case "dlq":
		if len(args) < 2 {
			return usagef("dlq: which? list, show, replay or discard")
		}
		return dlqCommand(ctx, args[1], args[2:], config.Env(getenv), stdout, stderr)
	}
	return usagef("unknown command %q", args[0])
}

func definitions(args []string, stdout io.Writer) error {
	fs := newFlags("definitions")
	out := fs.String("o", "", "write to `FILE` instead of standard output")
	if _, err := parse(fs, args, 0, ""); err != nil {
		return err
	}
	b, err := broker.DefinitionsJSON()
	if err != nil {
		return err
	}
	if *out == "" {
		_, err = stdout.Write(b)
		return err
	}
	if err := os.WriteFile(*out, b, 0o644); err != nil {
		return fmt.Errorf("write definitions: %w", err)
	}
	return nil
}

// ids is a repeatable --id flag; each value may also hold several ids
// separated by commas.
type ids []string

func (s *ids) String() string { return strings.Join(*s, ",") }
func (s *ids) Set(v string) error {
	for _, id := range strings.Split(v, ",") {
		if id = strings.TrimSpace(id); id != "" {
			*s = append(*s, id)
		}
	}
	return nil
}

func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported once, by main
	return fs
}

// parse parses flags before and after the positional arguments, of which
// there must be exactly want (what they are: wantWhat), and returns those.
func parse(fs *flag.FlagSet, args []string, want int, wantWhat string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usagef("%s: %v", fs.Name(), err)
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) != want {
		if want == 0 {
			return nil, usagef("%s: unexpected argument %q", fs.Name(), pos[0])
		}
		return nil, usagef("%s: want %s", fs.Name(), wantWhat)
	}
	return pos, nil
}

func dlqCommand(ctx context.Context, sub string, args []string, env config.Env, stdout, stderr io.Writer) error {
	fs := newFlags("dlq " + sub)
	asJSON := fs.Bool("json", false, "print JSON")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	var n *int
	var chosen ids
	var olderThan *time.Duration
	var all *bool
	want := 1
	switch sub {
	case "list":
		want = 0
	case "show":
		n = fs.Int("n", 20, "show the first `N` messages (0: all)")
	case "replay", "discard":
		fs.Var(&chosen, "id", "a message `ID` to "+sub+" (repeatable, or comma-separated)")
		olderThan = fs.Duration("older-than", 0, sub+" the messages dead for longer than `DURATION`")
		all = fs.Bool("all", false, sub+" every message")
	default:
		return usagef("unknown dlq command %q: list, show, replay or discard", sub)
	}
	pos, err := parse(fs, args, want, "one queue name (one of "+strings.Join(dlq.Origins(), ", ")+")")
	if err != nil {
		return err
	}
	var origin string
	if want == 1 {
		if origin, err = dlq.Origin(pos[0]); err != nil {
			return usageError{err.Error()}
		}
	}
	var sel dlq.Selector
	if all != nil {
		sel = dlq.Selector{IDs: chosen, OlderThan: *olderThan, All: *all}
		if err := sel.Validate(); err != nil {
			return usagef("dlq %s: %v (--id, --older-than or --all)", sub, err)
		}
	}

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	conn, err := dial(env.BrokerURLs())
	if err != nil {
		return err
	}
	defer conn.c.Close()

	switch sub {
	case "list":
		qs, err := dlq.List(ctx, conn)
		if err != nil {
			return err
		}
		if *asJSON {
			return writeJSON(stdout, qs)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DLQ\tMESSAGES\tREPLAYS TO")
		for _, q := range qs {
			fmt.Fprintf(tw, "%s\t%d\t%s\n", q.Name, q.Messages, q.Origin)
		}
		return tw.Flush()
	case "show":
		page, err := dlq.Show(ctx, conn, origin, *n)
		if err != nil {
			return err
		}
		waiting, err := waitingBehind(ctx, env.DatabaseURL(), origin, page)
		if err != nil {
			// The dead letters are the broker's: show them anyway.
			// On one line: pgx spreads a failed connection over several.
			fmt.Fprintf(stderr, "dabba: the events waiting behind these messages are not shown: %s\n", strings.Join(strings.Fields(err.Error()), " "))
		}
		if *asJSON {
			return writeJSON(stdout, dlq.WithWaiting(page, waiting))
		}
		printPage(stdout, dlq.WithWaiting(page, waiting), time.Now())
		return nil
	}
	op := dlq.Replay
	if sub == "discard" {
		op = dlq.Discard
	}
	res, err := op(ctx, conn, origin, sel)
	if *asJSON {
		if jerr := writeJSON(stdout, res); jerr != nil {
			return jerr
		}
	} else {
		printResult(stdout, sub, origin, res)
	}
	if err != nil {
		return err
	}
	if len(res.Failed) > 0 || len(res.Missing) > 0 {
		return fmt.Errorf("%d chosen messages not moved, %d ids not found; they are in %s as they were", len(res.Failed), len(res.Missing), res.Queue)
	}
	return nil
}

// mintToken handles "dabba token <kind> <subject> [-ttl 24h]": it prints a
// token, and nothing else, on stdout, so a shell can take it whole:
// CUSTOMER=$(bin/dabba token customer c1).
func mintToken(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newFlags("token")
	ttl := fs.Duration("ttl", 24*time.Hour, "how long the token is valid")
	pos, err := parse(fs, args, 2, "a kind ("+strings.Join(token.Audiences, ", ")+") and a subject")
	if err != nil {
		return err
	}
	kind, sub := pos[0], pos[1]
	if !slices.Contains(token.Audiences, kind) {
		return usagef("token: no kind %q (one of %s)", kind, strings.Join(token.Audiences, ", "))
	}
	if err := token.CheckSubject(kind, sub); err != nil {
		return usageError{"token: " + err.Error()}
	}
	if *ttl <= 0 {
		return usagef("token: -ttl must be positive")
	}
	secret, dev := token.ClientSecret(getenv)
	if dev {
		fmt.Fprintln(stderr, "dabba: TOKEN_SECRET is unset: signed with the development secret (only make run's stack accepts it)")
	}
	tok, err := token.NewSigner(secret).Mint(kind, sub, *ttl)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, tok)
	return err
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// bodyLimit keeps one huge body from flooding a terminal (--json has all).
const bodyLimit = 2000

func printPage(w io.Writer, page dlq.WaitingPage, now time.Time) {
	fmt.Fprintf(w, "%s: %d messages", page.Queue, page.Total)
	if len(page.Messages) < page.Total {
		fmt.Fprintf(w, " (showing the first %d)", len(page.Messages))
	}
	fmt.Fprintln(w)
	for i, m := range page.Messages {
		fmt.Fprintf(w, "\n--- %d. message %s\n", i+1, m.ID)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		row := func(k, v string) {
			if v != "" {
				fmt.Fprintf(tw, "%s\t%s\n", k, v)
			}
		}
		row("order", m.OrderID)
		row("reason", m.Reason)
		row("error", m.Error)
		row("origin queue", m.OriginQueue)
		key := m.RoutingKey
		if key == "" {
			key = "(unknown: cannot be replayed)"
		}
		row("routing key", key)
		row("type", m.Type)
		row("attempts", fmt.Sprint(m.Attempts))
		if !m.DeadAt.IsZero() {
			row("dead since", fmt.Sprintf("%s (%s ago)", m.DeadAt.UTC().Format(time.RFC3339), m.Age(now).Round(time.Second)))
		}
		if m.Replays > 0 {
			row("replayed", fmt.Sprintf("%d times before", m.Replays))
		}
		for _, d := range m.Deaths {
			row("x-death", fmt.Sprintf("%s from %s ×%d", d.Reason, d.Queue, d.Count))
		}
		body := m.Body
		if len(body) > bodyLimit {
			body = body[:bodyLimit] + fmt.Sprintf("… (%d bytes; --json shows all)", len(m.Body))
		}
		row("body", body)
		tw.Flush()
		for _, e := range m.Waiting {
			fmt.Fprintf(w, "  waiting behind it: %s #%d (held %s)\n", e.Type, e.Seq, max(now.Sub(e.HeldSince), 0).Round(time.Second))
		}
	}
}

// waitingBehind returns, by order id, the events origin's consumer holds
// back for the orders of page's messages, from the database at dbURL. It
// opens the database only when there is something to ask.
func waitingBehind(ctx context.Context, dbURL, origin string, page dlq.Page) (map[string][]dlq.Waiting, error) {
	ids := dlq.WaitingOrders(origin, page)
	if len(ids) == 0 {
		return nil, nil
	}
	db, err := postgres.Open(ctx, dbURL)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	return dlq.WaitingFor(ctx, db, origin, ids)
}

func printResult(w io.Writer, op, origin string, res dlq.Result) {
	verb := map[string]string{"replay": "replayed to " + origin, "discard": "discarded"}[op]
	fmt.Fprintf(w, "%s: %d of %d chosen messages %s (%d messages looked at)\n", res.Queue, res.Moved, res.Matched, verb, res.Scanned)
	for _, f := range res.Failed {
		fmt.Fprintf(w, "  not moved, still in %s: %s: %s\n", res.Queue, f.ID, f.Error)
	}
	for _, id := range res.Missing {
		fmt.Fprintf(w, "  not found in %s: %s\n", res.Queue, id)
	}
}

// conn is one plain AMQP connection: a command line tool should fail at
// once with the broker's own error, not wait for a recovery.
type conn struct{ c *amqp.Connection }

// Channel opens a channel.
func (c conn) Channel(context.Context) (*amqp.Channel, error) { return c.c.Channel() }

// Release closes ch.
func (c conn) Release(ch *amqp.Channel) { _ = ch.Close() }

// dial connects to the first broker of urls that answers.
func dial(urls []string) (conn, error) {
	var errs []error
	for _, u := range urls {
		props := amqp.NewConnectionProperties()
		props.SetClientConnectionName("dabba-cli")
		c, err := amqp.DialConfig(u, amqp.Config{Properties: props, Dial: amqp.DefaultDial(5 * time.Second)})
		if err == nil {
			return conn{c}, nil
		}
		errs = append(errs, fmt.Errorf("connect to %s: %w", redact(u), err))
	}
	if len(errs) == 0 {
		return conn{}, errors.New("RABBITMQ_URL holds no broker URL")
	}
	return conn{}, errors.Join(errs...)
}

// redact hides a URL's password.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
