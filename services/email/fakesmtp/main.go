// Command fakesmtp runs the SMTP sink (package smtpsink) as its own server:
// the mail provider of make run and the end-to-end tests, which read its
// inbox (GET /messages) and make it refuse mail (PUT /admin/refuse) over
// HTTP.
package main

import (
	"context"
	"io"
	"time"

	"go.uber.org/zap"

	"github.com/dabba/dabba/services/email/smtpsink"
	"github.com/dabba/dabba/shared/config"
	"github.com/dabba/dabba/shared/logging"
	"github.com/dabba/dabba/shared/service"
)

func main() { service.Main("fakesmtp", run) }

func run(ctx context.Context, _ []string, getenv func(string) string, _ io.Writer) error {
	env := config.Env(getenv)
	log, err := logging.New(getenv, "fakesmtp")
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	sink, err := smtpsink.Start(env.String("SMTP_ADDR", ":1025"))
	if err != nil {
		return err
	}
	defer sink.Close()
	log.Info("smtp listening", zap.String("addr", sink.Addr()))

	err = service.Serve(ctx, env.String("HTTP_ADDR", ":8025"), sink, log, nil)

	// Let sessions in progress finish their message; one that idles past
	// the grace period is cut off by the deferred Close. Not an error: the
	// sink was asked to stop and it has.
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if serr := sink.Shutdown(sctx); serr != nil {
		log.Warn("smtp sessions cut off at shutdown", zap.Error(serr))
	}
	return err
}
