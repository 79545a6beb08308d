# Yousign (API v3) as the second provider, against the Yousign double
# (test/yousign_double) and a real S3 server: the four-step create, webhooks
# verified by HMAC, polling when webhooks are lost, decline, withdraw,
# expiry, names Yousign would refuse, a crash after each create step,
# faults, a forged webhook, both providers in one database (the Skribble
# double beside it), and Yousign's rate limit.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use QesTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Digest::SHA qw(hmac_sha256_hex);
use HTTP::Tiny;
use JSON::PP;
use Time::HiRes qw(time usleep);

my $t_start = time;
my $d    = start_double();    # Skribble, for the scenario with both providers
my $y    = start_yousign();
my $s3   = start_s3();
my $node = qes_node('main', double => $d, yousign => $y, s3 => $s3,
	conf => { 'qes_sign.provider' => "'yousign'", 'qes_sign.retry_max_delay' => "'1s'" });

my $json = JSON::PP->new->canonical;
my $http = HTTP::Tiny->new(timeout => 30, keep_alive => 1);
my $pdf_hex = unpack('H*', yousign_pdf());

sub one { my ($sql) = @_; return $node->safe_psql('postgres', $sql); }
sub req { my ($id, $col) = @_; return one("SELECT $col FROM qes_sign.signatur_anfragen WHERE id = '$id'"); }
sub has_event { my ($id, $e) = @_; return scalar grep { $_ eq $e } @{ events($node, $id) }; }
sub count_events
{
	my ($e, @ids) = @_;
	return one("SELECT count(*) FROM qes_sign.audit_log WHERE event = '$e'"
		  . (@ids ? ' AND request_id IN (' . in_list(@ids) . ')' : ''));
}

$node->safe_psql('postgres', q{
	CREATE FUNCTION public.try_sql(q text) RETURNS text LANGUAGE plpgsql AS $$
	DECLARE st text; msg text; col text; hnt text;
	BEGIN
		EXECUTE q;
		RETURN 'ok';
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
		                        col = COLUMN_NAME, hnt = PG_EXCEPTION_HINT;
		RETURN concat_ws(chr(31), st, col, msg, hnt);
	END $$});

# try_sql(sql): {state => 'ok' or the SQLSTATE, column, message, hint}
sub try_sql
{
	my ($sql) = @_;
	my @f = split /\x1f/, one("SELECT public.try_sql(\$q\$$sql\$q\$)"), -1;
	return { state => $f[0], column => $f[1] // '', message => $f[2] // '', hint => $f[3] // '' };
}

# create_sql(signers): a create_request call for Yousign with these signers (a Perl list of hashes)
sub create_sql
{
	my ($signers) = @_;
	my $list = $json->encode($signers);    # UTF-8 byte strings in, the same bytes out
	utf8::downgrade($list);                # as bytes: psql would encode a character string again
	return "SELECT qes_sign.create_request('hv-test', 'Mietvertrag Namen', '\\x$pdf_hex'::bytea, "
	  . "\$j\$$list\$j\$::jsonb, provider => 'yousign')";
}

# sign_yousign(ids): every signer of each request signs at the double, in order
sub sign_yousign
{
	my (@ids) = @_;
	for my $id (@ids)
	{
		my $sr = ysr($y, $id) or die "request $id is not at the double\n";
		for my $s (@{ $sr->{_double}{signers} // [] })
		{
			my $rc = yousign_action($y, $sr->{id}, $s->{info}{email}, 'sign');
			die "signing $s->{info}{email} of $id: HTTP $rc\n" unless $rc == 200 || $rc == 201;
		}
	}
	return;
}

# live_at_double(id): the double's requests under our external_id that are not deleted
sub live_at_double
{
	my ($id) = @_;
	return grep { $_->{status} ne 'deleted' } @{ ctl_get($y, "requests?external_id=$id") // [] };
}

# settled(timeout, ids): no submit or discard of these requests is pending any more
sub settled
{
	my ($timeout, @ids) = @_;
	return wait_until($node, "SELECT count(*) FROM qes_sign.work_items WHERE state = 'pending' "
		  . "AND kind IN ('submit', 'discard') AND request_id IN (" . in_list(@ids) . ')', '0', $timeout);
}

# restarted(old pid): a new worker runs (after kill -9 the postmaster restarts everything)
sub restarted
{
	my ($pid) = @_;
	return wait_until($node, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'qes_sign worker' "
		  . "AND pid <> $pid", '1', 60);
}

# wait_stat(code, timeout): polls the double's stats every 5 ms until code(stats) is true
sub wait_stat
{
	my ($code, $timeout) = @_;
	my $deadline = time + ($timeout // 30);
	while (time < $deadline)
	{
		return 1 if $code->(double_stats($y));
		usleep(5_000);
	}
	return 0;
}

# reload(guc => value or undef): ALTER SYSTEM SET / RESET and reload
sub reload
{
	my (%set) = @_;
	for my $g (sort keys %set)
	{
		one(defined $set{$g} ? "ALTER SYSTEM SET $g = '$set{$g}'" : "ALTER SYSTEM RESET $g");
	}
	one('SELECT pg_reload_conf()');
	return;
}

scenario 'lifecycle: created in four steps, signed, archived' => sub {
	my @ids = create_requests($node, 1, provider => 'yousign');
	submitted_ok($node, \@ids, 60, 'activated at Yousign');
	my $sr = ysr($y, $ids[0]);
	is($sr->{status}, 'ongoing', 'the request is ongoing at the double');
	is(one("SELECT provider || ' ' || provider_id FROM qes_sign.signatur_anfragen WHERE id = '$ids[0]'"),
		"yousign $sr->{id}", 'provider and provider_id recorded');
	sign_yousign(@ids);
	all_status_ok($node, \@ids, 'archiviert', 60, 'archived after the signatures');
	my $st = double_stats($y);
	is($st->{created_by_external_id}{ $ids[0] }, 1, 'created once');
	is($st->{activated_by_external_id}{ $ids[0] }, 1, 'activated once');
	is(one("SELECT string_agg(kind, ',' ORDER BY kind) FROM qes_sign.archive_objects WHERE request_id = '$ids[0]'"),
		'protocol_json,protocol_pdf,record_json,signed_pdf', 'four objects archived');
};

scenario 'webhooks lost: polling completes the request' => sub {
	ctl_post($y, 'webhook', { enabled => JSON::PP::false });
	reload('qes_sign.reconcile_interval' => '1s');
	my $ok = eval {
		my $events0 = double_stats($y)->{webhooks}{events};
		my @ids = create_requests($node, 1, provider => 'yousign');
		submitted_ok($node, \@ids, 60, 'activated without webhooks (the answer of activate)');
		sign_yousign(@ids);
		is(ysr($y, $ids[0])->{status}, 'done', 'done at the double');
		all_status_ok($node, \@ids, 'archiviert', 60, 'archiviert by polling alone');
		is(double_stats($y)->{webhooks}{events}, $events0, 'the double sent no webhook meanwhile');
		is(one("SELECT count(*) FROM qes_sign.callback_inbox WHERE request_id = '$ids[0]'"), '0',
			'no callback stored for the request');
		my $polls = one("SELECT count(*) FROM qes_sign.work_items WHERE request_id = '$ids[0]' "
			  . "AND kind = 'refresh' AND payload ? 'poll'");
		cmp_ok($polls, '>=', 1, "reconciliation polled the request ($polls polls)");
		1;
	};
	my $err = $@;
	ctl_post($y, 'webhook', { enabled => JSON::PP::true });
	reload('qes_sign.reconcile_interval' => undef);
	die $err unless $ok;
	is(one('SHOW qes_sign.reconcile_interval'), '1h', 'reconcile_interval restored');
	is(ctl_get($y, 'webhook')->{enabled}, JSON::PP::true, 'webhooks enabled again');
};

scenario 'decline: abgebrochen with the decliner and the reason' => sub {
	my ($id) = create_requests($node, 1, provider => 'yousign');
	submitted_ok($node, [$id], 60, 'activated at Yousign');
	my $sr = ysr($y, $id);
	ok($sr->{signers_allowed_to_decline}, 'created with signers_allowed_to_decline: true');
	is(yousign_action($y, $sr->{id}, 'signer1@example.org', 'decline', { reason => 'Die Miete ist zu hoch' }),
		200, 'signer 1 declines at the double');
	ok(wait_until($node, "SELECT status || ' / ' || cancel_reason FROM qes_sign.signatur_anfragen WHERE id = '$id'",
			'abgebrochen / declined by signer1@example.org: Die Miete ist zu hoch', 30),
		'abgebrochen, the reason names the decliner and the reason');
	is(one("SELECT status FROM qes_sign.signers WHERE request_id = '$id' AND email = 'signer1\@example.org'"),
		'declined', 'signer 1 declined');
	is(ysr($y, $id)->{status}, 'declined', 'declined at the double');
	ok(has_event($id, 'signer_declined'), 'audit: signer_declined');
};

scenario 'withdraw: cancelled at Yousign with reason other and the note' => sub {
	my ($id) = create_requests($node, 1, provider => 'yousign');
	submitted_ok($node, [$id], 60, 'activated at Yousign');
	one("SELECT qes_sign.withdraw('$id', 'Mieter zieht nicht ein')");
	ok(wait_until($node, "SELECT status || ' / ' || cancel_reason FROM qes_sign.signatur_anfragen WHERE id = '$id'",
			'abgebrochen / withdrawn: Mieter zieht nicht ein', 30), 'abgebrochen / withdrawn: Mieter zieht nicht ein');
	my $sr = ysr($y, $id);
	is($sr->{status}, 'canceled', 'canceled at the double');
	is($sr->{_double}{cancel}{reason}, 'other', 'cancel reason: other');
	is($sr->{_double}{cancel}{custom_note}, 'Mieter zieht nicht ein', 'custom_note: the portal\'s text');
};

scenario 'expiry: our deadline, and Yousign\'s' => sub {
	# our own: expires_in 1 second; the worker cancels it at Yousign
	my ($id) = create_requests($node, 1, provider => 'yousign', expires_in => '1 second');
	ok(wait_until($node, "SELECT status || ' / ' || cancel_reason FROM qes_sign.signatur_anfragen WHERE id = '$id'",
			'abgebrochen / expired', 30), 'our expiry: abgebrochen / expired');
	isnt(req($id, 'provider_id'), '', 'it had reached Yousign');
	my $sr = ysr($y, $id);
	is($sr->{status}, 'canceled', 'canceled at the double');
	is($sr->{_double}{cancel}{custom_note}, 'expired', 'custom_note: expired');

	# Yousign's: the double expires an ongoing request
	my ($id2) = create_requests($node, 1, provider => 'yousign');
	submitted_ok($node, [$id2], 60, 'activated at Yousign');
	my $sr2 = ysr($y, $id2);
	ctl_post($y, "signature_requests/$sr2->{id}/expire");
	ok(wait_until($node, "SELECT status || ' / ' || cancel_reason FROM qes_sign.signatur_anfragen WHERE id = '$id2'",
			'abgebrochen / expired', 30), 'expired at Yousign: abgebrochen / expired');
	is(ysr($y, $id2)->{status}, 'expired', 'expired at the double');
};

scenario 'names Yousign refuses, and a QES signer without mobile' => sub {
	my $count = one('SELECT count(*) FROM qes_sign.signatur_anfragen');
	my $signers = one('SELECT count(*) FROM qes_sign.signers');
	my @ok = ({ first_name => 'Anna', last_name => 'Becker', email => 'anna@example.org', mobile => '+49 151 2000001' });

	my $e = try_sql(create_sql([ { first_name => 'Hans', last_name => 'Dr. Müller', email => 'hans@example.org',
			mobile => '+49 151 2000002' }, @ok ]));
	is("$e->{state} $e->{column}", '22023 signers[0].last_name', "'Dr. Müller' refused: $e->{message}");
	like($e->{message}, qr/signers\[0\]\.last_name/, 'the message names the field');
	like($e->{hint}, qr/Dr\./, "with a hint: $e->{hint}");

	$e = try_sql(create_sql([ @ok, { first_name => 'Hans', last_name => 'Meier', email => 'hans@example.org' } ]));
	is("$e->{state} $e->{column}", '22023 signers[1].mobile', "a QES signer without mobile refused: $e->{message}");
	like($e->{hint}, qr/international format/, "with a hint: $e->{hint}");

	is(one('SELECT count(*) FROM qes_sign.signatur_anfragen'), $count, 'no request stored');
	is(one('SELECT count(*) FROM qes_sign.signers'), $signers, 'no signer stored');

	$e = try_sql(create_sql([ { first_name => 'Hans-Jürgen', last_name => 'Müller-Lüdenscheidt',
			email => 'hans@example.org', mobile => '+49 151 2000002' }, @ok ]));
	is($e->{state}, 'ok', "'Müller-Lüdenscheidt' accepted");
	my ($id) = split /\n/, one("SELECT id FROM qes_sign.signatur_anfragen WHERE title = 'Mietvertrag Namen'");
	ok($id, 'stored');
	submitted_ok($node, [$id], 60, 'and accepted by Yousign');
	my ($s) = grep { $_->{info}{email} eq 'hans@example.org' } @{ ysr($y, $id)->{_double}{signers} };
	is($s->{info}{last_name}, 'Müller-Lüdenscheidt', 'last name at the double as given');
	is($s->{info}{phone_number}, '+491512000002', 'phone in E.164');
	sign_yousign($id);
	all_status_ok($node, [$id], 'archiviert', 60, 'signed and archived');
};

# crash(step, fault): a create through the fault, the worker killed (kill
# -9) at the moment the double saw it; the request must end activated
# exactly once, without a second live draft
sub crash
{
	my ($step, $fault, $what) = @_;
	my $kind = $fault->{delay_rate} ? 'delay' : "drop_after_$step";
	my $before = double_stats($y)->{faults_injected}{$kind};
	my $pid = worker_pid($node);
	ctl_post($y, 'faults', $fault);
	my ($id) = create_requests($node, 1, provider => 'yousign');
	my $seen = wait_stat(sub { $_[0]{faults_injected}{$kind} > $before }, 30);
	kill 'KILL', $pid;
	ctl_post($y, 'faults', {});
	ok($seen, "$what: the fault hit the $step step");
	ok(restarted($pid), "$what: the worker is back after kill -9");
	ok(wait_until($node, "SELECT provider_id IS NOT NULL FROM qes_sign.signatur_anfragen WHERE id = '$id'", 't', 40)
		  && settled(30, $id), "$what after $step: activated, nothing left to create or discard")
	  or diag("$what after $step: "
		  . one("SELECT string_agg(concat_ws(' ', kind, state, attempts, last_error, payload - 'sr'), E'\n') "
			  . "FROM qes_sign.work_items WHERE request_id = '$id'")
		  . "\nevents: @{ events($node, $id) }");
	my $st = double_stats($y);
	my @live = live_at_double($id);
	my ($c, $a) = map { $_ // 0 } ($st->{created_by_external_id}{$id}, $st->{activated_by_external_id}{$id});
	diag(sprintf('%s after %s: created %d, activated %d, live %d (%s), documents %d, signers %d; lookups %s; events: %s',
		$what, $step, $c, $a, scalar @live, join(',', map { $_->{status} } @live),
		scalar @{ $live[0]{documents} // [] }, scalar @{ $live[0]{signers} // [] },
		one("SELECT payload ->> 'lookups' FROM qes_sign.work_items WHERE request_id = '$id' AND kind = 'submit'"),
		join(',', grep { /recovered|discard|provider_error|call_failed/ } @{ events($node, $id) })));
	is($c, 1, "$what after $step: created once");
	is($a, 1, "$what after $step: activated once");
	is(scalar @live, 1, "$what after $step: one live request at Yousign");
	is(scalar @{ $live[0]{documents} // [] }, 1, "$what after $step: one document");
	is(scalar @{ $live[0]{signers} // [] }, 2, "$what after $step: two signers");
	is(req($id, 'provider_id'), $live[0]{id}, "$what after $step: the live one is ours");
	return $id;
}

scenario 'a crash after each of the four create steps' => sub {
	my @ids;
	for my $step (qw(create upload signer activate))
	{
		push @ids, crash($step, { "drop_after_${step}_count" => 1 }, 'answer dropped + kill -9');
	}
	# the step applied while the worker is gone: the double holds the call
	# (delay), the worker dies, and the double does the work 1.5 s after
	# the call, after the new worker's first lookup (within http_timeout)
	my %path = (create => '^POST /v3/signature_requests$', upload => '^POST /v3/signature_requests/[^/]+/documents$',
		signer => '^POST /v3/signature_requests/[^/]+/signers$', activate => '^POST /v3/signature_requests/[^/]+/activate$');
	for my $step (qw(create upload signer activate))
	{
		push @ids, crash($step, { delay_rate => 1, delay_ms => 1500, paths => $path{$step} }, 'kill -9 in flight');
	}
	sign_yousign(@ids);
	all_status_ok($node, \@ids, 'archiviert', 90, 'all eight signed and archived');
};

scenario 'a draft Yousign keeps refusing to activate: given up visibly, not looped' => sub {
	reload('qes_sign.retry_max_attempts' => '4');
	my $ok = eval {
		my $scripted0 = double_stats($y)->{scripted};
		ctl_post($y, 'script', { method => 'POST', path => '/activate$', status => 400, times => 1000,
				body => '{"type": "about:blank", "detail": "Document d-1 is a signable_document without a signature field."}' });
		my ($id) = create_requests($node, 1, provider => 'yousign');
		ok(wait_until($node, "SELECT state FROM qes_sign.work_items WHERE request_id = '$id' AND kind = 'submit'",
				'failed', 60), 'the submit is given up');
		my $tries = double_stats($y)->{scripted} - $scripted0;
		cmp_ok($tries, '<=', 6, "activation tried $tries times, not in a loop");
		ok(has_event($id, 'call_failed'), 'audit: call_failed');
		like(one("SELECT last_error FROM qes_sign.request_errors WHERE request_id = '$id'"),
			qr/still not activated/, 'request_errors says why');
		is(req($id, 'status'), 'offen', 'the request stays offen for an operator');
		1;
	};
	my $err = $@;
	ctl_post($y, 'script', {});
	reload('qes_sign.retry_max_attempts' => undef);
	die $err unless $ok;
};

scenario '200 requests through 20 % faults' => sub {
	my $t0 = time;
	my $ops0 = ops($node);
	my $st0 = double_stats($y);
	ctl_post($y, 'faults', { error_rate => 0.07, error_status => 503, rate_limit_rate => 0.01, retry_after => 1,
			timeout_rate => 0.04, timeout_ms => 300, drop_after_create_rate => 0.02, drop_after_upload_rate => 0.02,
			drop_after_signer_rate => 0.02, drop_after_activate_rate => 0.02, seed => 11 });
	my @ids = create_requests($node, 200, provider => 'yousign');
	submitted_ok($node, \@ids, 120, '200 requests activated through faults');
	my $t_sub = time - $t0;
	sign_yousign(@ids);
	all_status_ok($node, \@ids, 'archiviert', 180, 'all 200 archiviert through faults') or diag(one(qq{
		SELECT string_agg(concat_ws(' ', a.id, a.status, a.provider_status, w.kind, w.state, w.attempts, w.failures,
		                            round(extract(epoch FROM w.due_at - now())), w.last_error, w.payload), E'\n')
		  FROM qes_sign.signatur_anfragen a LEFT JOIN qes_sign.work_items w ON w.request_id = a.id AND w.state = 'pending'
		 WHERE a.status <> 'archiviert' AND a.id IN (@{[ in_list(@ids) ]})}));
	my $t_all = time - $t0;
	ctl_post($y, 'faults', {});
	ok(settled(30, @ids), 'no create or discard left');
	my $st = double_stats($y);
	my %live;
	$live{ $_->{external_id} }++ for grep { $_->{status} ne 'deleted' } @{ ctl_get($y, 'requests') };
	my @twice_c = grep { ($st->{created_by_external_id}{$_} // 0) != 1 } @ids;
	my @twice_a = grep { ($st->{activated_by_external_id}{$_} // 0) != 1 } @ids;
	my @two_live = grep { ($live{$_} // 0) != 1 } @ids;
	is(scalar @twice_c, 0, 'each created exactly once') or diag("not once: @twice_c[0 .. ($#twice_c < 4 ? $#twice_c : 4)]");
	is(scalar @twice_a, 0, 'each activated exactly once') or diag("not once: @twice_a[0 .. ($#twice_a < 4 ? $#twice_a : 4)]");
	is(scalar @two_live, 0, 'one live request each at Yousign') or diag("not one: @two_live[0 .. ($#two_live < 4 ? $#two_live : 4)]");
	my $ops = ops($node);
	my %f = map { $_ => $st->{faults_injected}{$_} - $st0->{faults_injected}{$_} } keys %{ $st->{faults_injected} };
	cmp_ok($f{$_}, '>', 0, "faults injected: $_ ($f{$_})")
	  for qw(error rate_limit timeout drop_after_create drop_after_upload drop_after_signer drop_after_activate);
	my $retries = ($ops->{api_retries} // 0) - ($ops0->{api_retries} // 0);
	cmp_ok($retries, '>', 0, "operations: $retries retries");
	is(count_events('call_failed', @ids), '0', 'no call given up');
	is(one("SELECT ok FROM qes_sign.verify_audit_chain()"), 't', 'audit chain intact');
	diag(sprintf('COUNTS yousign 200: %s; calls %d, rate_limited %d; api_calls %d, api_retries %d, api_failures %d; '
		  . 'create_recovered %d, draft_discarded %d, call_failed %d; submitted in %.1f s, archiviert in %.1f s',
		join(', ', map { "$_ $f{$_}" } sort keys %f), $st->{total_calls} - $st0->{total_calls},
		$st->{rate_limited} - $st0->{rate_limited},
		($ops->{api_calls} // 0) - ($ops0->{api_calls} // 0), $retries,
		($ops->{api_failures} // 0) - ($ops0->{api_failures} // 0),
		count_events('create_recovered', @ids), count_events('draft_discarded', @ids),
		count_events('call_failed', @ids), $t_sub, $t_all));
};

scenario 'a forged webhook changes nothing' => sub {
	my ($id) = create_requests($node, 1, provider => 'yousign');
	submitted_ok($node, [$id], 60, 'activated at Yousign');
	my $sr = ysr($y, $id);
	my $act;
	my $deadline = time + 20;
	until ($act || time > $deadline)
	{
		($act) = grep { $_->{state} eq 'delivered' }
		  @{ ctl_get($y, "webhooks?event_name=signature_request.activated&signature_request_id=$sr->{id}") };
		usleep(50_000) unless $act;
	}
	ok($act, 'the activation webhook was delivered') or return;
	my $inbox = one('SELECT count(*) FROM qes_sign.callback_inbox');
	my $status = req($id, 'status');

	# a forged "done" for the open request
	my %forged = %{ $act->{event} };
	$forged{event_id} = 'forged-' . $act->{event}{event_id};
	$forged{event_name} = 'signature_request.done';
	$forged{data} = { signature_request => { %{ $act->{event}{data}{signature_request} }, status => 'done' } };
	my $body = $json->encode(\%forged);
	my $hex = unpack('H*', $body);
	my $bad = 'sha256=' . hmac_sha256_hex($body, 'not-the-secret-0123456789abcdef');
	my $e = try_sql("SELECT qes_sign.receive_webhook('{\"X-Yousign-Signature-256\": \"$bad\"}', '\\x$hex'::bytea)");
	is($e->{state}, '28000', "a wrong X-Yousign-Signature-256: 28000 ($e->{message})");
	$e = try_sql("SELECT qes_sign.receive_webhook('{\"Content-Type\": \"application/json\"}', '\\x$hex'::bytea)");
	is($e->{state}, '28000', "no signature header: 28000 ($e->{message})");
	my $good_for_other = 'sha256=' . hmac_sha256_hex($body . ' ', $y->{secret});
	$e = try_sql("SELECT qes_sign.receive_webhook('{\"X-Yousign-Signature-256\": \"$good_for_other\"}', '\\x$hex'::bytea)");
	is($e->{state}, '28000', "a signature of other bytes: 28000 ($e->{message})");
	my $res = $http->request('POST', "http://127.0.0.1:$node->{relay}{port}/qes/webhook",
		{ headers => { 'Content-Type' => 'application/json', 'X-Yousign-Signature-256' => $bad }, content => $body });
	is($res->{status}, 403, 'through the relay: 403');
	is(one('SELECT count(*) FROM qes_sign.callback_inbox'), $inbox, 'nothing stored in callback_inbox');
	is(one("SELECT count(*) FROM qes_sign.webhook_ids WHERE webhook_id = 'yousign:$forged{event_id}'"), '0',
		'the forged event_id is not taken');
	usleep(1_500_000);
	is(req($id, 'status'), $status, "status unchanged ($status)");

	# a correctly signed replay of an event already received
	my $replay = $json->encode($act->{event});
	my $sig = 'sha256=' . hmac_sha256_hex($replay, $y->{secret});
	is(one("SELECT duplicate FROM qes_sign.receive_webhook('{\"X-Yousign-Signature-256\": \"$sig\"}', '\\x"
		  . unpack('H*', $replay) . "'::bytea)"), 't', 'a signed replay of a seen event_id: duplicate');
	is(one('SELECT count(*) FROM qes_sign.callback_inbox'), $inbox, 'and nothing stored');
	one("SELECT qes_sign.withdraw('$id', 'Test beendet')");
	all_status_ok($node, [$id], 'abgebrochen', 30, 'withdrawn afterwards');
};

scenario 'Skribble and Yousign side by side in one database' => sub {
	my @s = create_requests($node, 3, provider => 'skribble');
	my @v = create_requests($node, 3, provider => 'yousign');
	submitted_ok($node, [ @s, @v ], 60, 'three of each submitted');
	is(one('SELECT string_agg(DISTINCT provider, \',\') FROM qes_sign.signatur_anfragen WHERE id IN (' . in_list(@s) . ')'),
		'skribble', 'Skribble requests recorded as skribble');
	is(one('SELECT string_agg(DISTINCT provider, \',\') FROM qes_sign.signatur_anfragen WHERE id IN (' . in_list(@v) . ')'),
		'yousign', 'Yousign requests recorded as yousign');
	is(sign_all($d, $node, \@s), 0, 'Skribble signers signed');
	sign_yousign(@v);
	all_status_ok($node, \@s, 'archiviert', 60, 'Skribble requests archiviert');
	all_status_ok($node, \@v, 'archiviert', 60, 'Yousign requests archiviert');
	creates_once_ok($d, \@s, 'each Skribble request created once at Skribble');
	my $ys = double_stats($y);
	is(scalar(grep { exists $ys->{created_by_external_id}{$_} } @s), 0, 'no Skribble request reached Yousign');
	is(scalar(grep { ($ys->{created_by_external_id}{$_} // 0) == 1 } @v), 3, 'each Yousign request created once there');
	my $sk = double_stats($d)->{creates_by_custom} // {};
	is(scalar(grep { exists $sk->{$_} } @v), 0, 'no Yousign request reached Skribble');
};

scenario 'rate limit: 429 and Retry-After honoured' => sub {
	my $limit = 60;    # Yousign's production figure
	# the double's minute window (aligned on its clock) ends in about 6 s
	my $now = time * 1000 + ctl_get($y, 'clock')->{offset_ms};
	my $advance = int((int($now / 60000) + 2) * 60000 - 6000 - $now);
	ctl_post($y, 'clock', { advance_ms => $advance });
	ctl_post($y, 'options', { rate_per_minute => $limit });
	my $ok = eval {
		one('DELETE FROM qes_sign.provider_pauses');
		# someone else used up the window: qes_sign's first call gets a 429
		my $used = 0;
		for (1 .. $limit)
		{
			my $r = $http->request('GET', "$y->{url}/v3/signature_requests?limit=1",
				{ headers => { Authorization => 'Bearer test-key' } });
			$used++ if $r->{status} == 200;
		}
		my $st0 = double_stats($y);
		my $t0 = time;
		my @ids = create_requests($node, 2, provider => 'yousign');
		ok(wait_until($node, "SELECT count(*) FROM qes_sign.provider_pauses WHERE provider = 'yousign' "
			  . "AND reason = 'HTTP 429' AND until > now()", '1', 20), 'a 429 paused Yousign (provider_pauses)');
		my $pause = one("SELECT extract(epoch FROM until - now()) FROM qes_sign.provider_pauses");
		my $calls = double_stats($y)->{total_calls};
		usleep(1_000_000 * ($pause - 0.5)) if $pause > 0.5;
		is(double_stats($y)->{total_calls}, $calls, sprintf('no call to Yousign during the pause (%.1f s)', $pause));
		submitted_ok($node, \@ids, 90, 'both activated after the window');
		my $t_sub = time - $t0;
		sign_yousign(@ids);
		all_status_ok($node, \@ids, 'archiviert', 120, 'both archiviert under the limit');
		my $st = double_stats($y);
		my $limited = $st->{rate_limited} - $st0->{rate_limited};
		cmp_ok($limited, '>=', 1, 'the double answered 429');
		cmp_ok($limited, '<=', 3, "no storm of 429s ($limited)");
		my %by = map { $_ => $st->{calls}{$_} - ($st0->{calls}{$_} // 0) } keys %{ $st->{calls} };
		diag(sprintf('rate limit %d/min: %d calls by the test, then %d calls by qes_sign (%s), %d answered 429, '
			  . 'paused %.1f s, activated after %.1f s, archiviert after %.1f s',
			$limit, $used, $st->{total_calls} - $st0->{total_calls},
			join(', ', map { "$_ $by{$_}" } grep { $by{$_} } sort keys %by), $limited, $pause, $t_sub, time - $t0));
		1;
	};
	my $err = $@;
	ctl_post($y, 'options', { rate_per_minute => 0 });
	die $err unless $ok;
};

note(sprintf('011_yousign: %.1f s', time - $t_start));
done_testing();
