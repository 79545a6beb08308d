# Skribble as it really is (skribble-api.md, "Rules and ambiguities"),
# against the double with the documented behaviour switched on:
#  1. a lost create answer (connection dropped after the create was stored,
#     a Skribble slower than qes_sign.http_timeout, a create that timed out
#     unstored) is found by a search, whatever the page numbering (base 0
#     or 1) and although an unpaged list is cut at 50; never created twice;
#  2. 409, 423, 404 and 503 on a refresh are retried; given up visibly
#     after qes_sign.retry_max_attempts, the request left as it is; a
#     create answered 423 is sent again, one refused with 406 ends it;
#  3. replace_signer once somebody signed is refused at once; a DELETE
#     Skribble refuses anyway is undone;
#  4. Skribble's SIGNED decides completion (signers removed and added at
#     Skribble are settled); our rows alone never complete a request;
#  5. expiration_date is kept as deletion_date; an archive still pending
#     within a day of it raises deletion_imminent once; an open request is
#     withdrawn before Skribble deletes it;
#  6. sequences 1..k and normalised mobile numbers; the login's Accept and
#     body-less POST/DELETE pass the double's strict checks.
# 6 runs before 5, which moves the clocks; 1f runs last (a create stored
# after the client timed out).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use QesTest;
use PostgreSQL::Test::Utils;
use Test::More;
use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
use MIME::Base64 qw(encode_base64);
use List::Util qw(max);
use Time::HiRes qw(time usleep);

# every switch at its documented, strict reading (the defaults, said aloud)
my $d = start_double(
	'page-base'             => 1,
	'unpaged-limit'         => 50,
	'deletion-days'         => 5,
	'delete-expired'        => 'on',
	'strict-accept'         => 'on',
	'strict-content-type'   => 'on',
	'allow-mixed-sequences' => 'off');
# qes_sign.http_timeout is 4 s here (60 s by default) to keep the test short.
# It bounds the search window: a lost create is searched for at once, and
# again 1, 2, 4 ... s later while it is younger than http_timeout; only then
# is it sent again.  The goal "a lost answer whose request Skribble stored
# is recovered within 15 s" is measured below from the moment the answer was
# lost (the double's created_at for a dropped connection, the timeout for a
# slow Skribble) to create_recovered; with 4 s the window allows the
# searches at 0, 1 and 3 s that the paging cases use, with the default 60 s
# it allows those at 0, 1, 3, 7 and 15 s (and more), so a request that
# Skribble shows within 15 s is found within 15 s either way.
my $http_timeout = 4;
my $node = qes_node('rules', double => $d,
	conf => { 'qes_sign.http_timeout' => "'${http_timeout}s'" });

my $json = JSON::PP->new->canonical;
my $http = HTTP::Tiny->new(timeout => 30, keep_alive => 1);
my $pdf_hex = unpack('H*', test_pdf());
my $pdf_b64 = encode_base64(test_pdf(), '');

sub one { my ($sql) = @_; return $node->safe_psql('postgres', $sql); }

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

# make_requests(n, title => ..., signers => [{...}], ordered => 0): ids
sub make_requests
{
	my ($n, %o) = @_;
	my $title = $o{title} // 'Mietvertrag Regeln';
	my $signers = $json->encode($o{signers} // [ map {
		{ first_name => 'Signer', last_name => "Nummer $_", email => "signer$_\@example.org" } } 1 .. 2 ]);
	my $args = $o{ordered} ? ', ordered => true' : '';
	return split /\n/, one(qq{
		SELECT qes_sign.create_request('hv-test', \$t\$$title\$t\$, '\\x$pdf_hex'::bytea,
		       \$j\$$signers\$j\$::jsonb$args)
		  FROM generate_series(1, $n) g ORDER BY g});
}

sub sr_id { my ($id) = @_; return one("SELECT provider_id FROM qes_sign.signatur_anfragen WHERE id = '$id'"); }
sub status_of { my ($id) = @_; return one("SELECT status FROM qes_sign.signatur_anfragen WHERE id = '$id'"); }
sub at_double { my ($id) = @_; return ctl_get($d, 'signature-requests/' . sr_id($id)); }

# n_events(id, event): how often the request's trail holds event
sub n_events
{
	my ($id, $event) = @_;
	return one("SELECT count(*) FROM qes_sign.audit_log WHERE request_id = '$id' AND event = '$event'");
}

sub list_calls { return double_stats($d)->{calls}{'GET /v2/signature-requests'} // 0; }
sub calls_of { my ($key) = @_; return double_stats($d)->{calls}{$key} // 0; }

# api(method, path, body, headers): a call to the double's /v2 API as
# another client would make it (Skribble's web app, another portal);
# returns (status, decoded answer)
my $api_token;
sub api
{
	my ($method, $path, $body, %h) = @_;
	for my $try (1, 2)
	{
		unless ($api_token)
		{
			my $res = $http->request('POST', "$d->{url}/v2/access/login", {
					headers => { 'Content-Type' => 'application/json', Accept => 'text/plain' },
					content => $json->encode({ username => 'api_demo_qes_sign', 'api-key' => 'test-key' }) });
			die "login at the double: $res->{status} $res->{content}" unless $res->{status} == 200;
			$api_token = $res->{content};
		}
		my $res = $http->request($method, "$d->{url}/v2$path", {
				headers => { Authorization => "Bearer $api_token",
					defined $body ? ('Content-Type' => 'application/json') : (), %h },
				defined $body ? (content => $json->encode($body)) : () });
		if ($res->{status} == 401 || $res->{status} == 403 && $res->{content} =~ /error\.auth\.token_/)
		{
			undef $api_token;
			next;
		}
		return ($res->{status}, length($res->{content}) ? eval { $json->decode($res->{content}) } : undef);
	}
	die "$method $path: no valid token at the double";
}

# sid_of(sr, email): the Skribble sid of a signer at the double
sub sid_of
{
	my ($sr, $email) = @_;
	my ($s) = grep { lc($_->{signer_identity_data}{email_address} // '') eq $email } @{ $sr->{signatures} };
	return $s && $s->{sid};
}

# create_others(title, n): n requests titled "<title> Anlage <k>" at the
# double, through its API as another portal would create them, all at once
# (node's fetch: a few hundred ms for 120)
my $others_js = <<'JS';
const [url, title, n, pdf] = process.argv.slice(1);
(async () => {
  const login = await fetch(url + '/v2/access/login', { method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'text/plain' },
    body: JSON.stringify({ username: 'api_demo_qes_sign', 'api-key': 'test-key' }) });
  const token = await login.text();
  const res = await Promise.all(Array.from({ length: Number(n) }, (_, i) =>
    fetch(url + '/v2/signature-requests', { method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + token },
      body: JSON.stringify({ title: `${title} Anlage ${i + 1}`, content: pdf, content_type: 'application/pdf',
        signatures: [{ signer_identity_data: { email_address: 'other@example.org',
          first_name: 'Andere', last_name: 'Verwaltung' } }] }) })));
  const refused = res.filter((r) => r.status !== 200).map((r) => r.status);
  process.stdout.write(refused.length ? 'refused: ' + refused.join(' ') : 'ok');
})().catch((e) => process.stdout.write(String(e)));
JS
sub create_others
{
	my ($title, $n) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'node', '-e', $others_js, $d->{url}, $title, $n, $pdf_b64 ], '<', \undef, '>', \$out, '2>', \$err);
	die "creating other requests at the double: $out $err" unless $out eq 'ok';
	return;
}

sub median
{
	my @s = sort { $a <=> $b } @_;
	return @s % 2 ? $s[$#s / 2] : ($s[@s / 2 - 1] + $s[@s / 2]) / 2;
}

# recovery(ids): per request, seconds from the moment the
# double stored the create (its created_at, on its clock, shifted to real
# time) to the create_recovered entry of the trail
sub recovery
{
	my ($ids) = @_;
	my $offset = ctl_get($d, 'clock')->{offset_ms} / 1000;
	my @t;
	for my $id (@$ids)
	{
		my ($sr) = @{ ctl_get($d, "requests?custom=$id") };
		push @t, one(qq{SELECT extract(epoch FROM l.at) - extract(epoch FROM '$sr->{created_at}'::timestamptz)
		                       + $offset
		                  FROM qes_sign.audit_log l WHERE l.request_id = '$id' AND l.event = 'create_recovered'});
	}
	return @t;
}

my %recovery;    # variant => [seconds], for the summary at the end

# lost_creates(tag, page_base, unpaged_limit, lists_per_request, n): n creates
# whose answers are lost (the double drops the connection after storing),
# while Skribble's search does not show them yet (its first two answers
# are empty, as while Skribble still indexes: searched again 1 s, then 2 s
# later); meanwhile 120 requests whose titles contain the same search
# string are created at the double, after the lost ones, so they come first
# in every (newest first) answer: the unpaged answer, cut at unpaged_limit,
# misses the lost ones, which only the pages (page_size 100) hold, on the
# second page
sub lost_creates
{
	my ($tag, $base, $limit, $lists, $n) = @_;
	my $title = "Mietvertrag Paging $tag";
	ctl_post($d, 'options', { page_base => $base, unpaged_limit => $limit });
	ctl_post($d, 'script', { method => 'GET', status => 200,
			path    => '^/v2/signature-requests\?search=Mietvertrag%20Paging%20' . $tag . '$',
			headers => { 'Content-Type' => 'application/json' }, body => '[]', times => 2 * $n });
	my $drops0  = double_stats($d)->{faults_injected}{drop_after_create};
	my $lists0  = list_calls();
	ctl_post($d, 'faults', { drop_after_create_count => $n });
	my @ids = make_requests($n, title => $title);
	my $deadline = time + 20;
	usleep(10_000) while double_stats($d)->{faults_injected}{drop_after_create} < $drops0 + $n && time < $deadline;
	is(double_stats($d)->{faults_injected}{drop_after_create}, $drops0 + $n, "$tag: $n create answers dropped");
	my $t0 = time;
	create_others($title, 120);
	note(sprintf('%s: 120 other requests created at the double in %.2f s', $tag, time - $t0));
	cmp_ok(list_calls() - $lists0, '<=', 2 * $n, "$tag: the others were in before the third searches");
	ctl_post($d, 'faults', {});
	submitted_ok($node, \@ids, 30, "$tag: all $n lost creates recovered");
	creates_once_ok($d, \@ids, "$tag: each created exactly once at Skribble");
	my @wrong = grep { sr_id($_) ne (ctl_get($d, "requests?custom=$_")->[0]{id} // '') } @ids;
	is(scalar(@wrong), 0, "$tag: each request points at the one Skribble stored");
	is(one('SELECT count(*) FROM qes_sign.audit_log WHERE event = \'create_recovered\' '
		  . "AND (detail ->> 'searches')::int = 3 AND request_id IN (" . in_list(@ids) . ')'), $n,
		"$tag: each recovered (create_recovered) by its third search");
	is(scalar(@{ ctl_get($d, 'script') }), 0, "$tag: every request got two empty answers");
	is(list_calls() - $lists0, $lists * $n,
		"$tag: $lists list calls per request (empty answer, unpaged, pages as needed)");
	is(one('SELECT count(*) FROM qes_sign.signatur_anfragen WHERE status <> \'offen\' AND id IN ('
		  . in_list(@ids) . ')'), 0, "$tag: all open");
	my @t = recovery(\@ids);
	$recovery{$tag} = \@t;
	cmp_ok(max(@t), '<', 15, sprintf('%s: lost answer to recovery max %.2f s, median %.2f s (< 15 s)',
			$tag, max(@t), median(@t)));
	return @ids;
}

scenario '1a. lost creates: pages from 1, unpaged answers cut at 50' => sub {
	# 2 empty, unpaged (50 others), page 0: 400, page 1 (100 others), page 2 (found)
	lost_creates('Eins', 1, 50, 6, 5);
};

scenario '1b. lost creates: pages from 0, unpaged answers cut at 50' => sub {
	# 2 empty, unpaged (50 others), page 0 (100 others), page 1 (found)
	lost_creates('Null', 0, 50, 5, 5);
};

scenario '1c. lost creates: pages from 1, unpaged answers complete' => sub {
	# 2 empty, unpaged (all 125): found without paging
	lost_creates('Alle', 1, 0, 3, 5);
	ctl_post($d, 'options', { page_base => 1, unpaged_limit => 50 });
};

scenario '1d. lost creates: Skribble slower than qes_sign.http_timeout' => sub {
	# every answer takes 6 s (> 4 s): the creates time out, and so do the
	# searches until Skribble is fast again; they are stored 6 s after they
	# were posted and found once the searches get through
	my $creates0 = calls_of('POST /v2/signature-requests');
	ctl_post($d, 'latency', { ms => 6000 });
	my @ids = make_requests(3, title => 'Mietvertrag Langsam');
	my $deadline = time + 30;
	usleep(50_000) while grep({ !@{ ctl_get($d, "requests?custom=$_") } } @ids) && time < $deadline;
	ctl_post($d, 'latency', { ms => 0 });
	is(calls_of('POST /v2/signature-requests') - $creates0, 3, 'three creates posted');
	submitted_ok($node, \@ids, 30, 'the three slow creates recovered');
	creates_once_ok($d, \@ids, 'slow creates created exactly once');
	is(one("SELECT count(*) FROM qes_sign.audit_log WHERE event = 'create_recovered' AND request_id IN ("
		  . in_list(@ids) . ')'), 3, 'each recovered by a search (create_recovered)');
	my @t = recovery(\@ids);
	$recovery{'slow, from the stored create'} = \@t;
	cmp_ok(max(@t), '<', 15, sprintf('stored create to recovery max %.2f s, median %.2f s (< 15 s)',
			max(@t), median(@t)));
	# the answer was lost when the call timed out: qes_sign.http_timeout after the post
	my @l = split /\n/, one(qq{
		SELECT extract(epoch FROM l.at - (w.payload ->> 'posted')::timestamptz) - $http_timeout
		  FROM qes_sign.audit_log l JOIN qes_sign.work_items w ON w.request_id = l.request_id AND w.kind = 'submit'
		 WHERE l.event = 'create_recovered' AND l.request_id IN (} . in_list(@ids) . ')');
	$recovery{'slow, from the timeout'} = \@l;
	is(scalar(@l), 3, 'the posting time of each create is known');
	cmp_ok(max(@l), '<', 15, sprintf('timed-out answer to recovery max %.2f s, median %.2f s (< 15 s)',
			max(@l), median(@l)));
};

scenario '1e. a create that timed out unstored is sent again, once' => sub {
	my $timeouts0 = double_stats($d)->{faults_injected}{timeout};
	ctl_post($d, 'faults', { timeout_rate => 1, timeout_ms => 20000, paths => '^POST /v2/signature-requests$' });
	my $t0 = time;
	my ($id) = make_requests(1, title => 'Mietvertrag Zeitueberschreitung');
	my $deadline = time + 10;
	usleep(20_000) while double_stats($d)->{faults_injected}{timeout} == $timeouts0 && time < $deadline;
	ctl_post($d, 'faults', {});
	submitted_ok($node, [$id], 30, 'submitted by a second create');
	my $took = time - $t0;
	creates_once_ok($d, [$id], 'stored exactly once (the first create did no work)');
	is(n_events($id, 'create_recovered'), 0, 'nothing to recover: not found, created again');
	cmp_ok($took, '>=', $http_timeout, sprintf('sent again only after qes_sign.http_timeout (%.1f s)', $took));
	cmp_ok($took, '<', $http_timeout + 5, 'and promptly then');
};

scenario '2. 409, 423, 404, 503 on a refresh are retried; given up visibly, never abgebrochen' => sub {
	my ($id) = make_requests(1, title => 'Mietvertrag Wiederholen');
	submitted_ok($node, [$id], 30);
	my $sr = sr_id($id);
	for my $s ([409, 'The resource state does not allow the operation right now, retry later'],
		[423, 'The resource is being processed, retry later'], [404, 'SignatureRequest not found'],
		[503, 'Service Unavailable'])
	{
		ctl_post($d, 'script', { method => 'GET', path => "^/v2/signature-requests/$sr\$", status => $s->[0],
				headers => { 'Content-Type' => 'application/problem+json' },
				body => $json->encode({ type => 'https://api.skribble.com/problem/problem-with-message',
						method => 'GET', path => "/v2/signature-requests/$sr", status => $s->[0],
						message => $s->[1] }) });
	}
	my $retries0 = ops($node)->{api_retries} // 0;
	# signer 1 opens the document: an UPDATE callback, a refresh
	is(signer_action($d, $sr, 'signer1@example.org', 'view'), 200, 'signer 1 viewed at the double');
	ok(wait_until($node, "SELECT status FROM qes_sign.signatur_anfragen WHERE id = '$id'", 'in_signatur', 20),
		'in_signatur after 409, 423, 404 and 503 on the refresh');
	is(scalar(@{ ctl_get($d, 'script') }), 0, 'all four errors were answered');
	cmp_ok((ops($node)->{api_retries} // 0) - $retries0, '>=', 4, 'four retries counted');
	is(one("SELECT max(attempts) FROM qes_sign.work_items WHERE request_id = '$id' AND kind = 'refresh'"), 5,
		'the refresh took five calls');
	is(n_events($id, 'skribble_error') + n_events($id, 'call_failed'), 0, 'no skribble_error, no call_failed');

	# with qes_sign.retry_max_attempts = 3, three 423 in a row give up the call
	$node->safe_psql('postgres', 'ALTER SYSTEM SET qes_sign.retry_max_attempts = 3; SELECT pg_reload_conf()');
	sleep 1;
	ctl_post($d, 'script', { method => 'GET', path => "^/v2/signature-requests/$sr\$", status => 423,
			headers => { 'Content-Type' => 'application/problem+json' }, times => 3,
			body => $json->encode({ type => 'https://api.skribble.com/problem/problem-with-message',
					status => 423, message => 'The resource is being processed, retry later' }) });
	is(signer_action($d, $sr, 'signer2@example.org', 'view'), 200, 'signer 2 viewed at the double');
	ok(wait_until($node, "SELECT count(*) FROM qes_sign.audit_log WHERE request_id = '$id' AND event = 'call_failed'",
			'1', 20), 'call_failed in the trail after three 423');
	like(one("SELECT kind || ' ' || state || ' ' || last_error || ' ' || (deletion_date IS NOT NULL) "
		  . "FROM qes_sign.request_errors WHERE request_id = '$id'"),
		qr/^refresh failed gave up after 3 failed attempts \(last: HTTP 423: .*\) true$/,
		'request_errors: the refresh given up after 3 attempts, with the deletion date');
	is(one("SELECT detail ->> 'call' FROM qes_sign.audit_log WHERE request_id = '$id' AND event = 'call_failed'"),
		'get', 'call_failed names the refresh');
	is(status_of($id), 'in_signatur', 'the request left as it was');
	$node->safe_psql('postgres', 'ALTER SYSTEM RESET qes_sign.retry_max_attempts; SELECT pg_reload_conf()');
	sleep 1;
	is(sign_all($d, $node, [$id]), 0, 'both signers signed');
	all_status_ok($node, [$id], 'vollstaendig', 20, 'then vollstaendig, never abgebrochen');
	is(one("SELECT count(*) FROM qes_sign.audit_log WHERE request_id = '$id' AND event = 'status_abgebrochen'"), 0,
		'never abgebrochen');
};

scenario '2b. a create answered 423 is sent again; one refused with 406 ends the request' => sub {
	ctl_post($d, 'script', { method => 'POST', path => '^/v2/signature-requests$', status => 423,
			headers => { 'Content-Type' => 'application/problem+json', 'Retry-After' => '1' },
			body => $json->encode({ type => 'https://api.skribble.com/problem/problem-with-message',
					method => 'POST', path => '/v2/signature-requests', status => 423,
					message => 'The resource is being processed, retry later' }) });
	my $t0 = time;
	my ($id) = make_requests(1, title => 'Mietvertrag Gesperrt');
	submitted_ok($node, [$id], 30, 'submitted after a 423');
	note(sprintf('a create answered 423 was submitted after %.1f s', time - $t0));
	is(scalar(@{ ctl_get($d, 'script') }), 0, 'the 423 was answered');
	creates_once_ok($d, [$id], 'created once');
	is(n_events($id, 'skribble_error'), 0, 'no skribble_error');
	is(status_of($id), 'offen', 'offen');

	my $doc = unpack('H*', test_pdf('/Encrypt 5 0 R '));
	my $bad = one(qq{SELECT qes_sign.create_request('hv-test', 'Mietvertrag Verschluesselt', '\\x$doc'::bytea,
		'[{"first_name": "A", "last_name": "B", "email": "a\@example.org"}]')});
	ok(wait_until($node, "SELECT status || ': ' || cancel_reason FROM qes_sign.signatur_anfragen WHERE id = '$bad'",
			'abgebrochen: rejected by Skribble: The document is corrupt or encrypted (HTTP 406)', 20),
		'an encrypted PDF refused with 406: abgebrochen');
	is(n_events($bad, 'skribble_error'), 1, 'skribble_error in the trail');
};

scenario '3a. replace_signer once a signer signed: refused at once' => sub {
	my ($id) = make_requests(1, title => 'Mietvertrag Ersetzen');
	submitted_ok($node, [$id], 30);
	is(signer_action($d, sr_id($id), 'signer1@example.org', 'sign'), 200, 'signer 1 signed at the double');
	ok(wait_until($node, "SELECT status FROM qes_sign.signers WHERE request_id = '$id' "
		  . "AND email = 'signer1\@example.org'", 'signed', 20), 'signer 1 signed here');
	my $t0 = time;
	my $e = try_sql(qq{SELECT qes_sign.replace_signer('$id', 'signer2\@example.org',
		'{"first_name": "Neu", "last_name": "Zwei", "email": "neu2\@example.org"}')});
	is($e->{state}, '55000', 'SQLSTATE 55000');
	like($e->{hint}, qr/withdraw the request/, "with a hint: $e->{hint}");
	cmp_ok(time - $t0, '<', 1, 'at once');
	is(one("SELECT count(*) FROM qes_sign.work_items WHERE request_id = '$id' AND kind = 'replace_signer'"), 0,
		'nothing queued');
	is(one("SELECT string_agg(email || ':' || status, ',' ORDER BY position) FROM qes_sign.signers "
		  . "WHERE request_id = '$id'"), 'signer1@example.org:signed,signer2@example.org:open',
		'the signers unchanged');
	is(n_events($id, 'signer_replaced'), 0, 'no signer_replaced');
	is(signer_action($d, sr_id($id), 'signer2@example.org', 'sign'), 200, 'signer 2 signed');
	all_status_ok($node, [$id], 'vollstaendig', 20);
};

scenario '3b. a replacement Skribble refuses anyway is undone' => sub {
	my ($id) = make_requests(1, title => 'Mietvertrag Wettlauf');
	submitted_ok($node, [$id], 30);
	my $sr = sr_id($id);
	my ($adds0, $deletes0) = (calls_of('POST /v2/signature-requests/{SR_ID}/signatures'),
		calls_of('DELETE /v2/signature-requests/{SR_ID}/signatures/{SID}'));
	# as if a signer had signed between our check and the DELETE
	ctl_post($d, 'script', { method => 'DELETE', path => "^/v2/signature-requests/$sr/signatures/[^/?]+\$",
			status => 400, headers => { 'Content-Type' => 'application/problem+json' },
			body => $json->encode({ type => 'https://api.skribble.com/problem/problem-with-message',
					method => 'DELETE', path => "/v2/signature-requests/$sr/signatures", status => 400,
					message => 'The signature request cannot be changed because a signer has already signed' }) });
	is(try_sql(qq{SELECT qes_sign.replace_signer('$id', 'signer2\@example.org',
		'{"first_name": "Neu", "last_name": "Zwei", "email": "neu2\@example.org"}')})->{state}, 'ok',
		'replace_signer accepted (nobody signed yet)');
	ok(wait_until($node, "SELECT count(*) FROM qes_sign.audit_log WHERE request_id = '$id' "
		  . "AND event = 'replace_signer_refused'", '1', 20), 'replace_signer_refused in the trail');
	is(calls_of('DELETE /v2/signature-requests/{SR_ID}/signatures/{SID}') - $deletes0, 1, 'one DELETE sent');
	is(calls_of('POST /v2/signature-requests/{SR_ID}/signatures') - $adds0, 0, 'no signer added at Skribble');
	is(one("SELECT string_agg(email || ':' || status || ':' || coalesce(replaced_by::text, '-'), ',' ORDER BY id) "
		  . "FROM qes_sign.signers WHERE request_id = '$id'"),
		'signer1@example.org:open:-,signer2@example.org:open:-', 'the old signer back, the new one gone');
	is(one("SELECT string_agg(event, ',' ORDER BY seq) FROM qes_sign.audit_log WHERE request_id = '$id' "
		  . "AND event IN ('signer_replaced', 'replace_signer_refused')"), 'signer_replaced,replace_signer_refused',
		'the trail: replaced, then refused');
	is(one("SELECT state FROM qes_sign.work_items WHERE request_id = '$id' AND kind = 'replace_signer'"), 'failed',
		'the replacement ended');
	is(join(',', sort map { $_->{signer_identity_data}{email_address} } @{ at_double($id)->{signatures} }),
		'signer1@example.org,signer2@example.org', 'Skribble still has the original signers');
	ok(wait_until($node, "SELECT (SELECT count(*) FROM qes_sign.work_items WHERE request_id = '$id' AND kind = 'refresh' "
		  . "AND state = 'done') > 0", 't', 20), 'a refresh was queued and done');
	is(sign_all($d, $node, [$id]), 0, 'the original signers signed');
	all_status_ok($node, [$id], 'vollstaendig', 20, 'then vollstaendig');
};

scenario '3c. a replacement before anyone signed goes through' => sub {
	my ($id) = make_requests(1, title => 'Mietvertrag Tausch');
	submitted_ok($node, [$id], 30);
	my $ums0 = double_stats($d)->{unsupported_media_type};
	is(try_sql(qq{SELECT qes_sign.replace_signer('$id', 'signer2\@example.org',
		'{"first_name": "Neu", "last_name": "Drei", "email": "neu3\@example.org"}')})->{state}, 'ok',
		'replace_signer accepted');
	ok(wait_until($node, "SELECT state FROM qes_sign.work_items WHERE request_id = '$id' AND kind = 'replace_signer'",
			'done', 20), 'the replacement done at Skribble');
	is(join(',', sort map { $_->{signer_identity_data}{email_address} } @{ at_double($id)->{signatures} }),
		'neu3@example.org,signer1@example.org', 'Skribble has signer 1 and the new signer');
	is(double_stats($d)->{unsupported_media_type}, $ums0, 'the body-less DELETE was not refused for its type (415)');
	is(sign_all($d, $node, [$id]), 0, 'signer 1 and the new signer signed');
	all_status_ok($node, [$id], 'vollstaendig', 20);
};

scenario '4a. Skribble SIGNED with a signer removed and one added there' => sub {
	my ($id) = make_requests(1, title => 'Mietvertrag Webapp');
	submitted_ok($node, [$id], 30);
	my $sr = sr_id($id);
	# changed in Skribble's web app: signer 2 out, Dora Dritte in
	my ($st) = api('DELETE', "/signature-requests/$sr/signatures/" . sid_of(at_double($id), 'signer2@example.org'));
	is($st, 200, 'signer 2 removed at Skribble');
	($st) = api('POST', "/signature-requests/$sr/signatures",
		{ signer_identity_data => { email_address => 'dritte@example.org', first_name => 'Dora', last_name => 'Dritte' } });
	is($st, 200, 'Dora Dritte added at Skribble');
	is(signer_action($d, $sr, 'signer1@example.org', 'sign'), 200, 'signer 1 signed');
	ok(wait_until($node, "SELECT status FROM qes_sign.signers WHERE request_id = '$id' "
		  . "AND email = 'signer1\@example.org'", 'signed', 20), 'signer 1 signed here');
	is(at_double($id)->{status_overall}, 'OPEN', 'Skribble: OPEN');
	is(status_of($id), 'in_signatur', 'so not complete here either');
	is(signer_action($d, $sr, 'dritte@example.org', 'sign'), 200, 'Dora Dritte signed');
	is(at_double($id)->{status_overall}, 'SIGNED', 'Skribble: SIGNED');
	all_status_ok($node, [$id], 'vollstaendig', 20, 'vollstaendig once Skribble reports SIGNED');
	is(one("SELECT string_agg(email || ':' || status, ',' ORDER BY id) FROM qes_sign.signers WHERE request_id = '$id'"),
		'signer1@example.org:signed,signer2@example.org:replaced,dritte@example.org:signed',
		'signer 2 taken out, Dora Dritte added');
	is(one("SELECT string_agg(event || ':' || (detail ->> 'signer'), ',' ORDER BY seq) FROM qes_sign.audit_log "
		  . "WHERE request_id = '$id' AND event IN ('signer_added_at_skribble', 'signer_not_at_skribble')"),
		'signer_added_at_skribble:dritte@example.org,signer_not_at_skribble:signer2@example.org',
		'both in the trail');
};

scenario '4b. our rows alone never complete a request Skribble reports OPEN' => sub {
	my ($id) = make_requests(1, title => 'Mietvertrag Nur Lokal');
	submitted_ok($node, [$id], 30);
	my $sr = sr_id($id);
	# an answer with every signature SIGNED but the request OPEN
	my $fake = at_double($id);
	delete $fake->{_double};
	$_->{status_code} = 'SIGNED', $_->{signed_at} = $fake->{created_at} for @{ $fake->{signatures} };
	ctl_post($d, 'script', { method => 'GET', path => "^/v2/signature-requests/$sr\$", status => 200,
			headers => { 'Content-Type' => 'application/json' }, body => $json->encode($fake) });
	is(signer_action($d, $sr, 'signer1@example.org', 'view'), 200, 'a view: a refresh');
	ok(wait_until($node, "SELECT count(*) FROM qes_sign.signers WHERE request_id = '$id' AND status = 'signed'",
			'2', 20), 'both signers signed here (the answer applied)');
	is(status_of($id), 'in_signatur', 'not vollstaendig: Skribble says OPEN');
	sleep 2;    # ticks and whatever else the worker does
	is(status_of($id), 'in_signatur', 'still not vollstaendig');
	is(sign_all($d, $node, [$id]), 0, 'both signed at Skribble');
	all_status_ok($node, [$id], 'vollstaendig', 20, 'vollstaendig once Skribble reports SIGNED');
};

scenario '6. sequences, mobile numbers, Accept and content types' => sub {
	my $n0 = one('SELECT count(*) FROM qes_sign.signatur_anfragen');
	my $signers = sub {
		my (@seq) = @_;
		return $json->encode([ map { { first_name => 'V', last_name => "N$_", email => "seq$_\@example.org",
						sequence => $seq[$_ - 1] } } 1 .. @seq ]);
	};
	for my $s ([1, 3], [2, 3], [1, 1, 3])
	{
		my $e = try_sql(qq{SELECT qes_sign.create_request('hv-test', 't', '\\x$pdf_hex'::bytea,
			'} . $signers->(@$s) . q{', ordered => true)});
		is("$e->{state} $e->{column}", '22023 signers.sequence', "sequences @$s refused: $e->{message}");
	}
	my $e = try_sql(qq{SELECT qes_sign.create_request('hv-test', 't', '\\x$pdf_hex'::bytea,
		'[{"first_name": "A", "last_name": "B", "email": "a\@example.org", "mobile": "+41 79 123 45 67"},
		  {"first_name": "C", "last_name": "D", "email": "c\@example.org", "mobile": "0151 12345678"}]')});
	is("$e->{state} $e->{column}", '22023 signers[1].mobile', "a national mobile number refused: $e->{message}");
	is(one('SELECT count(*) FROM qes_sign.signatur_anfragen'), $n0, 'nothing created');

	# the double refuses gaps itself: a client that sent one would fail there
	my ($st, $ans) = api('POST', '/signature-requests', { title => 'Luecke', content => $pdf_b64,
			signatures => [ map { { signer_identity_data => { email_address => "g$_\@example.org" },
						sequence => $_ * 2 - 1 } } 1 .. 2 ] });
	is("$st " . ($ans->{violations}[0]{field} // ''), '400 signatures', 'the double refuses sequences 1, 3');

	my ($id) = make_requests(1, title => 'Mietvertrag Reihenfolge', ordered => 1, signers => [
			{ first_name => 'A', last_name => 'Eins', email => 'signer1@example.org', sequence => 1,
				mobile => '+49 151 1234-5678' },
			{ first_name => 'B', last_name => 'Zwei', email => 'signer2@example.org', sequence => 1 },
			{ first_name => 'C', last_name => 'Drei', email => 'signer3@example.org', sequence => 2 } ]);
	submitted_ok($node, [$id], 30, 'an ordered request (1, 1, 2) submitted');
	my $sr = at_double($id);
	is(join(',', map { $_->{sequence} } @{ $sr->{signatures} }), '1,1,2', 'Skribble got sequences 1, 1, 2');
	is(join(',', map { $_->{status_code} } @{ $sr->{signatures} }), 'OPEN,OPEN,WAITING', 'signer 3 waits');
	is($sr->{signatures}[0]{signer_identity_data}{mobile_number}, '4915112345678', 'the mobile number normalised');
	is(n_events($id, 'skribble_error'), 0, 'no error from Skribble');

	# a body-less POST (reminder) passes the strict content type check
	is(try_sql("SELECT qes_sign.remind('$id')")->{state}, 'ok', 'reminder requested');
	ok(wait_until($node, "SELECT count(*) FROM qes_sign.audit_log WHERE request_id = '$id' AND event = 'reminded'",
			'1', 20), 'reminded at Skribble');
	my $o = ctl_get($d, 'options');
	ok($o->{strict_accept} && $o->{strict_content_type}, 'the double checks Accept and Content-Type');
	my $res = $http->request('POST', "$d->{url}/v2/access/login", { headers => {
				'Content-Type' => 'application/json', Accept => 'application/json' },
			content => $json->encode({ username => 'api_demo_qes_sign', 'api-key' => 'test-key' }) });
	is($res->{status}, 406, 'the double refuses a login that does not accept text/plain');
	($st) = api('POST', "/signature-requests/$sr->{id}/remind", undef,
		'Content-Type' => 'application/x-www-form-urlencoded');
	is($st, 415, 'and a body-less POST with a form content type');
	my $stats = double_stats($d);
	cmp_ok($stats->{logins}, '>=', 1, "the worker logged in ($stats->{logins} logins)");
	is($stats->{not_acceptable}, 1, 'no login of the worker was refused for its Accept (406)');
	is($stats->{unsupported_media_type}, 1, 'no call of the worker was refused for its content type (415)');
};

scenario '5. deletion dates: kept, watched, and beaten' => sub {
	# a request of an earlier scenario: deleted 5 days after its creation
	my ($old) = split /\n/, one("SELECT id FROM qes_sign.signatur_anfragen WHERE title = 'Mietvertrag Tausch'");
	my $sr = at_double($old);
	is(one("SELECT deletion_date FROM qes_sign.overview WHERE id = '$old'"),
		one("SELECT ('$sr->{created_at}'::timestamptz AT TIME ZONE 'UTC')::date + 5"),
		"deletion_date = created + 5 days ($sr->{expiration_date}), shown in the overview");
	is(one("SELECT deletion_date = '$sr->{expiration_date}' FROM qes_sign.signatur_anfragen WHERE id = '$old'"), 't',
		"equal to Skribble's expiration_date");
	is(one("SELECT expires_at FROM qes_sign.signatur_anfragen WHERE id = '$old'"),
		one("SELECT (date '$sr->{expiration_date}' - 1)::timestamp AT TIME ZONE 'Europe/Berlin'"),
		'expires_at clamped to the day before (00:00 in Berlin; qes_sign.expiry is 30 days)');

	# requests Skribble deletes 2 days after their creation (3 late in the
	# evening, when Berlin's date is ahead of UTC's): one is completed, one
	# left open; then the clocks move one day (two) on
	my $days = one(q{SELECT CASE WHEN (now() AT TIME ZONE 'Europe/Berlin')::date > (now() AT TIME ZONE 'UTC')::date
	                        THEN 3 ELSE 2 END});
	ctl_post($d, 'options', { deletion_days => 0 + $days });
	my ($done, $open) = make_requests(2, title => 'Mietvertrag Loeschung');
	submitted_ok($node, [ $done, $open ], 30);
	my $srd = at_double($done);
	is(one("SELECT deletion_date FROM qes_sign.signatur_anfragen WHERE id = '$done'"),
		one("SELECT ('$srd->{created_at}'::timestamptz AT TIME ZONE 'UTC')::date + $days"),
		"deletion_date = created + $days days at the double");
	is(one("SELECT expires_at < deletion_date::timestamp AT TIME ZONE 'Europe/Berlin' "
		  . "FROM qes_sign.signatur_anfragen WHERE id = '$open'"), 't', 'expires_at before the deletion date');
	is(sign_all($d, $node, [$done]), 0, 'one request signed');
	all_status_ok($node, [$done], 'vollstaendig', 20);
	is(one("SELECT count(*) FROM qes_sign.audit_log WHERE event = 'deletion_imminent'"), 0,
		'no deletion_imminent yet');
	is(ops($node)->{archive_pending_before_deletion}, 0, 'archive_pending_before_deletion 0');
	is(status_of($open), 'offen', 'the other one still open');

	my $travel = $days - 1;
	ctl_post($d, 'clock', { advance_ms => $travel * 86_400_000 });
	my $then = one("SELECT (now() + interval '$travel days')::text");
	$node->safe_psql('postgres', "ALTER SYSTEM SET qes_sign.test_clock = '$then'; SELECT pg_reload_conf()");
	ok(wait_until($node, "SELECT count(*) FROM qes_sign.audit_log WHERE request_id = '$done' "
		  . "AND event = 'deletion_imminent'", '1', 20), "$travel day(s) later: deletion_imminent");
	ok(wait_until($node, "SELECT status || ' ' || cancel_reason FROM qes_sign.signatur_anfragen WHERE id = '$open'",
			'abgebrochen expired', 20), 'the open request expired (abgebrochen: expired)');
	my $sro = at_double($open);
	is($sro->{status_overall}, 'WITHDRAWN', 'withdrawn at Skribble');
	my $today = substr(ctl_get($d, 'clock')->{now}, 0, 10);
	ok($today lt $sro->{expiration_date}, "before Skribble deletes it ($today < $sro->{expiration_date})");
	cmp_ok(ops($node)->{archive_pending_before_deletion}, '>', 0, 'archive_pending_before_deletion counted');
	sleep 3;    # three more ticks
	is(one("SELECT count(*) FROM qes_sign.audit_log WHERE event = 'deletion_imminent'"), 1,
		'deletion_imminent raised once, for the completed request only');
	is(status_of($done), 'vollstaendig', 'the completed request waits for its archive (no S3 here)');
};
# (also when the scenario died half way)
$node->safe_psql('postgres', 'ALTER SYSTEM RESET qes_sign.test_clock; SELECT pg_reload_conf()');

# A create that Skribble stores later than qes_sign.http_timeout after it
# was posted: the first search after the timeout comes back empty, and the
# create is stored a moment later.  The search window runs
# qes_sign.http_timeout from the later of the post and the lost answer, so
# the searches go on and find it: created once.  (Last: a duplicate would
# fail every later creates_once_ok.)
scenario '1f. a create Skribble stores after the client timed out, after one search' => sub {
	# the create takes 5 s (> 4 s); Skribble answers the search at once and
	# stores the create a moment after the search came back empty
	my $creates0 = calls_of('POST /v2/signature-requests');
	ctl_post($d, 'latency', { ms => 5000 });
	my ($id) = make_requests(1, title => 'Mietvertrag Spaet');
	my $deadline = time + 10;
	usleep(10_000) while calls_of('POST /v2/signature-requests') == $creates0 && time < $deadline;
	ctl_post($d, 'latency', { ms => 0 });
	submitted_ok($node, [$id], 30, 'submitted');
	sleep 2;    # the late create is stored too
	creates_once_ok($d, [$id], 'created exactly once');
};

note(sprintf('recovery %s: n=%d max %.2f s median %.2f s', $_, scalar(@{ $recovery{$_} }),
		max(@{ $recovery{$_} }), median(@{ $recovery{$_} })))
  for sort keys %recovery;
$node->stop;
done_testing();
