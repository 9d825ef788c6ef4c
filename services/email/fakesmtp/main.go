// Command fakesmtp runs the SMTP sink (package smtpsink) as its own server:
// the mail provider of make run and the end-to-end tests, with its inbox on
// HTTP.
package main

import (
	"context"
	"io"

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
	sink, err := smtpsink.Start(env.String("SMTP_ADDR", ":1025"))
	if err != nil {
		return err
	}
	defer sink.Close()
	log.Info("smtp listening", zap.String("addr", sink.Addr()))
	return service.Serve(ctx, env.String("HTTP_ADDR", ":8025"), sink.Handler(), log, nil)
}
