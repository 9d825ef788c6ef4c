package main

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/dlq"
	"github.com/dabba/dabba/shared/httpx"
)

// adminTimeout bounds one dead-letter operation; a replay of a large DLQ
// belongs in the dabba command, which has no such limit.
const adminTimeout = 30 * time.Second

// brokerProblem turns a failed broker operation into a 503 problem.
func brokerProblem(err error) error {
	p := httpx.NewProblem(http.StatusServiceUnavailable, "broker: "+err.Error())
	p.RetryAfter = 1
	return p
}

// dlqOrigin reads the {queue} of an admin route: a work queue or its DLQ.
func dlqOrigin(r *http.Request) (string, error) {
	origin, err := dlq.Origin(chi.URLParam(r, "queue"))
	if err != nil {
		return "", httpx.NewProblem(http.StatusNotFound, err.Error())
	}
	return origin, nil
}

// handleDLQList handles "GET /v1/admin/dlq": every dead-letter queue with
// its depth.
func handleDLQList(log *zap.Logger, chs dlq.Channels) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), adminTimeout)
		defer cancel()
		qs, err := dlq.List(ctx, chs)
		if err != nil {
			httpx.Error(w, r, log, brokerProblem(err))
			return
		}
		httpx.Encode(w, http.StatusOK, map[string]any{"queues": qs})
	})
}

// handleDLQMessages handles "GET /v1/admin/dlq/{queue}/messages?limit=N":
// the first N (default 100, at most 1000) dead messages and the total,
// each with the later events of its order that the queue holds back behind
// it ("waiting"). The messages are RabbitMQ's: with the database out of
// reach they are served without "waiting", and a warning is logged.
func handleDLQMessages(log *zap.Logger, chs dlq.Channels, db *pgxpool.Pool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin, err := dlqOrigin(r)
		if err != nil {
			httpx.Error(w, r, log, err)
			return
		}
		limit := 100
		if s := r.URL.Query().Get("limit"); s != "" {
			if limit, err = strconv.Atoi(s); err != nil || limit < 1 || limit > 1000 {
				httpx.Error(w, r, log, httpx.FieldProblem("limit", "must be a number from 1 to 1000"))
				return
			}
		}
		ctx, cancel := context.WithTimeout(r.Context(), adminTimeout)
		defer cancel()
		page, err := dlq.Show(ctx, chs, origin, limit)
		if err != nil {
			httpx.Error(w, r, log, brokerProblem(err))
			return
		}
		waiting, err := waitingBehind(ctx, db, origin, page)
		if err != nil {
			log.Warn("dead letters shown without the events waiting behind them", zap.String("queue", page.Queue), zap.Error(err))
		}
		httpx.Encode(w, http.StatusOK, dlq.WithWaiting(page, waiting))
	})
}

// waitingTimeout bounds the look-up of the events waiting behind dead
// messages: past it, the page goes without them rather than late.
const waitingTimeout = 5 * time.Second

// waitingBehind returns, by order id, the events origin's consumer holds
// back for the orders of page's messages, in one query.
func waitingBehind(ctx context.Context, db *pgxpool.Pool, origin string, page dlq.Page) (map[string][]dlq.Waiting, error) {
	ids := dlq.WaitingOrders(origin, page)
	if len(ids) == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, waitingTimeout)
	defer cancel()
	return dlq.WaitingFor(ctx, db, origin, ids)
}

// selectRequest is the body of the replay and discard routes: exactly one
// of ids, older_than (a Go duration such as "10m") or all.
type selectRequest struct {
	IDs       []string `json:"ids"`
	OlderThan string   `json:"older_than"`
	All       bool     `json:"all"`
}

func (s selectRequest) selector() (dlq.Selector, error) {
	sel := dlq.Selector{IDs: s.IDs, All: s.All}
	if s.OlderThan != "" {
		d, err := time.ParseDuration(s.OlderThan)
		if err != nil || d <= 0 {
			return sel, httpx.FieldProblem("older_than", `must be a positive duration such as "90s" or "10m"`)
		}
		sel.OlderThan = d
	}
	if err := sel.Validate(); err != nil {
		return sel, httpx.FieldProblem("ids", err.Error()+": give ids, older_than or all")
	}
	return sel, nil
}

// handleDLQReplay handles "POST /v1/admin/dlq/{queue}/replay": the chosen
// messages go back to their work queue as fresh messages. The answer (200)
// is the operation's result; chosen messages that could not be replayed
// stay in the DLQ and are listed in "failed".
func handleDLQReplay(log *zap.Logger, chs dlq.Channels) http.Handler {
	return handleDLQMove(log, chs, dlq.Replay, "replayed")
}

// handleDLQDiscard handles "POST /v1/admin/dlq/{queue}/discard": the
// chosen messages are deleted.
func handleDLQDiscard(log *zap.Logger, chs dlq.Channels) http.Handler {
	return handleDLQMove(log, chs, dlq.Discard, "discarded")
}

type moveFunc func(context.Context, dlq.Channels, string, dlq.Selector) (dlq.Result, error)

func handleDLQMove(log *zap.Logger, chs dlq.Channels, move moveFunc, done string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin, err := dlqOrigin(r)
		if err != nil {
			httpx.Error(w, r, log, err)
			return
		}
		req, err := httpx.Decode[selectRequest](w, r, 1<<20)
		if err != nil {
			httpx.Error(w, r, log, err)
			return
		}
		sel, err := req.selector()
		if err != nil {
			httpx.Error(w, r, log, err)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), adminTimeout)
		defer cancel()
		res, err := move(ctx, chs, origin, sel)
		if err != nil && res.Moved == 0 {
			httpx.Error(w, r, log, brokerProblem(err))
			return
		}
		if err != nil {
			// Some moved before the failure: say what happened.
			res.Failed = append(res.Failed, dlq.Failure{Error: err.Error()})
		}
		log.Info("dead letters "+done, zap.String("queue", res.Queue), zap.Int("moved", res.Moved),
			zap.Int("failed", len(res.Failed)), zap.Strings("missing", res.Missing))
		httpx.Encode(w, http.StatusOK, res)
	})
}
