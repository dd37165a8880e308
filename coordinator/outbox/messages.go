package outbox

import (
	"bytes"
	"fmt"
	"io"
	"strings"

	"github.com/fc-ci/fc/storage"
)

// maxTailBytes bounds how much of a log's end is read for an e-mail.
const maxTailBytes = 64 << 10

// buildMail is the e-mail about a finished build: what it is, how it ended (and
// how the job's previous build did), its link, and for a failure the step that
// failed with the last lines of its log.
func (o *Outbox) buildMail(e storage.DeliveryEvaluation, b storage.DeliveryBuild, step storage.FailedStep, failed bool) email {
	name := e.Project + ":" + e.Jobset + ":" + b.Job
	status := statusText(b.Status)
	subject := fmt.Sprintf("[FC] %s: %s", name, status)
	if b.PreviousStatus != "" && (b.PreviousStatus == "succeeded") == failed {
		subject += fmt.Sprintf(" (was %s)", strings.ToLower(statusText(b.PreviousStatus)))
	}
	var body strings.Builder
	fmt.Fprintf(&body, "The build of %s on %s ended: %s.\n\n", name, b.System, status)
	fmt.Fprintf(&body, "Build:       %s\n", o.buildURL(b.ID))
	fmt.Fprintf(&body, "Evaluation:  %s\n", o.evalURL(e.ID))
	if e.Commit != "" {
		fmt.Fprintf(&body, "Commit:      %s\n", e.Commit)
	}
	if b.PreviousStatus != "" {
		fmt.Fprintf(&body, "Before:      %s\n", statusText(b.PreviousStatus))
	}
	fmt.Fprintf(&body, "Derivation:  %s\n", b.DrvPath)
	if failed && step.ID != 0 {
		fmt.Fprintf(&body, "\nThe failing step: %s (%s", step.DrvPath, statusText(step.Status))
		if step.Error != "" {
			fmt.Fprintf(&body, ": %s", step.Error)
		}
		body.WriteString(")\n")
		fmt.Fprintf(&body, "Its log:     %s/api/v1/builds/%d/log?step=%d\n", o.cfg.PublicURL, b.ID, step.ID)
		if tail := o.logTail(step); tail != "" {
			fmt.Fprintf(&body, "\nThe last lines of its log:\n\n%s", indent(tail))
		}
	}
	body.WriteString("\n-- \nFC, at " + o.cfg.PublicURL + "\n")
	return email{To: e.Notifications.Emails, Subject: subject, Body: body.String()}
}

// evaluationMail is the e-mail about an evaluation that failed.
func (o *Outbox) evaluationMail(e storage.DeliveryEvaluation) email {
	var body strings.Builder
	fmt.Fprintf(&body, "The evaluation of %s:%s failed.\n\n", e.Project, e.Jobset)
	fmt.Fprintf(&body, "Evaluation:  %s\n", o.evalURL(e.ID))
	if e.Commit != "" {
		fmt.Fprintf(&body, "Commit:      %s\n", e.Commit)
	}
	if e.Error != "" {
		fmt.Fprintf(&body, "\nThe error:\n\n%s", indent(lastLines([]byte(e.Error), logTailLines)))
	}
	body.WriteString("\n-- \nFC, at " + o.cfg.PublicURL + "\n")
	return email{To: e.Notifications.Emails, Subject: fmt.Sprintf("[FC] %s:%s: evaluation failed", e.Project, e.Jobset),
		Body: body.String()}
}

// logTail is the last lines of a step's log ("" when it has none to read).
func (o *Outbox) logTail(s storage.FailedStep) string {
	if o.cfg.Logs == nil {
		return ""
	}
	f, err := o.cfg.Logs.OpenEnded(s.ID, s.LeaseEpoch)
	if err != nil {
		return ""
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return ""
	}
	from := max(size-maxTailBytes, 0)
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return ""
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return ""
	}
	if from > 0 {
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:] // a partial first line
		}
	}
	return lastLines(b, logTailLines)
}

// lastLines is the last n lines of b, invalid UTF-8 replaced.
func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(strings.ToValidUTF8(string(b), "\uFFFD"), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n") + "\n"
}

func indent(s string) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(s, "\n") {
		if line != "" {
			b.WriteString("    " + line)
		}
	}
	return b.String()
}
