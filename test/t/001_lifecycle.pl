# The worker against the Skribble double, driven by callbacks through the
# relay (reconciliation is set to 1 h, so only callbacks can move a request):
# full lifecycle with notifications and audit events, ordered signing,
# decline, withdraw, expiry, replacing a signer, reminders and their 429, a
# create that Skribble refuses.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use QesTest;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP qw(decode_json);
use HTTP::Tiny;

my $d    = start_double();
my $node = qes_node('lifecycle', double => $d);

sub one { my ($sql) = @_; return $node->safe_psql('postgres', $sql); }
sub req { my ($id, $col) = @_; return one("SELECT $col FROM qes_sign.signatur_anfragen WHERE id = '$id'"); }
sub signer_status
{
	my ($id, $email) = @_;
	return one("SELECT status FROM qes_sign.signers WHERE request_id = '$id' AND email = '$email'");
}
sub has_event { my ($id, $e) = @_; return scalar grep { $_ eq $e } @{ events($node, $id) }; }
sub sr_at_double { my ($id) = @_; return ctl_get($d, 'signature-requests/' . req($id, 'provider_id')); }

ok(wait_until($node, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'qes_sign worker' "
	  . "AND application_name = 'qes_sign worker' AND datname = 'postgres'", '1', 30),
	'one qes_sign worker in pg_stat_activity');

scenario 'full lifecycle to vollstaendig through callbacks' => sub {
	my $listener = $node->background_psql('postgres');
	$listener->query_safe('LISTEN qes_sign');

	my ($id) = create_requests($node, 1);
	submitted_ok($node, [$id]);
	is(req($id, 'status'), 'offen', 'status stays offen after sending');
	ok(has_event($id, 'sent'), 'audit: sent');
	my $sr = sr_at_double($id);
	is($sr->{custom}, $id, "Skribble's custom field carries the request uuid");
	is($sr->{_double}{requested_legislation}, 'EIDAS', 'created with legislation EIDAS');
	is_deeply([ sort @{ $sr->{attach_on_success} // [] } ], [ 'SIGNATURE_PROTOCOL', 'SIGNED_DOCUMENT' ],
		'created with attach_on_success');

	is(signer_action($d, $sr->{id}, 'signer1@example.org', 'view'), 200, 'signer 1 views');
	ok(wait_until($node, "SELECT status FROM qes_sign.signatur_anfragen WHERE id = '$id'", 'in_signatur'),
		'first view: in_signatur');
	is(signer_status($id, 'signer1@example.org'), 'viewed', 'signer 1 viewed');
	is(signer_status($id, 'signer2@example.org'), 'open',   'signer 2 still open');

	is(signer_action($d, $sr->{id}, 'signer1@example.org', 'sign'), 200, 'signer 1 signs');
	ok(wait_until($node, "SELECT status FROM qes_sign.signers WHERE request_id = '$id' "
		  . "AND email = 'signer1\@example.org'", 'signed'), 'signer 1 signed');
	is(req($id, 'status'), 'in_signatur', 'one of two signed: still in_signatur');

	is(signer_action($d, $sr->{id}, 'signer2@example.org', 'sign'), 200, 'signer 2 signs');
	ok(wait_until($node, "SELECT status FROM qes_sign.signatur_anfragen WHERE id = '$id'", 'vollstaendig'),
		'all signed: vollstaendig');
	is(one("SELECT string_agg(status::text, ',' ORDER BY position) FROM qes_sign.signers WHERE request_id = '$id'"),
		'signed,signed', 'both signers signed');
	is(req($id, 'document_id'), sr_at_double($id)->{document_id}, "the request keeps Skribble's current document_id");
	is(req($id, 'completed_at IS NOT NULL AND sent_at IS NOT NULL AND first_viewed_at IS NOT NULL'), 't',
		'sent, first view and completion recorded');
	my @ev = @{ events($node, $id) };
	for my $e (qw(created sent signer_viewed status_in_signatur signer_signed status_vollstaendig))
	{
		ok((grep { $_ eq $e } @ev), "audit: $e");
	}
	is(scalar(grep { $_ eq 'signer_signed' } @ev), 2, 'audit: two signer_signed entries');
	is(one("SELECT count(*) FROM qes_sign.callback_inbox WHERE request_id = '$id' AND processed_at IS NULL"),
		'0', 'every callback of the request was processed');
	cmp_ok(one("SELECT count(*) FROM qes_sign.callback_inbox WHERE request_id = '$id'"), '>=', 3,
		'callbacks arrived through the relay');

	my $notes = $listener->query_safe('SELECT 1');
	my @payloads = map { decode_json($_) } $notes =~ /payload "(\{.*?\})" received/g;
	my @mine = grep { $_->{id} eq $id } @payloads;
	ok((grep { $_->{event} eq 'status_in_signatur' && $_->{status} eq 'in_signatur' } @mine),
		'NOTIFY status_in_signatur');
	ok((grep { $_->{event} eq 'status_vollstaendig' && $_->{status} eq 'vollstaendig' } @mine),
		'NOTIFY status_vollstaendig');
	is(scalar(grep { $_->{event} eq 'signer_signed' } @mine), 2, 'NOTIFY signer_signed twice');
	# any role may LISTEN: a payload is a hint with id, event and status only
	is(join(',', sort keys %{ { map { %$_ } @mine } }), 'event,id,status',
		'NOTIFY payloads carry id, event and status, nothing else');
	unlike($notes, qr/\@example\.org|hv-test/, 'no e-mail address and no tenant in any payload');
	$listener->quit;
};

scenario 'ordered signing' => sub {
	my ($ord) = create_requests($node, 1, ordered => 1);
	submitted_ok($node, [$ord], undef, 'ordered request submitted');
	ok(wait_until($node, "SELECT string_agg(status::text, ',' ORDER BY sequence) FROM qes_sign.signers "
		  . "WHERE request_id = '$ord'", 'open,waiting'), 'ordered: signer 2 waiting');
	my $ord_sr = req($ord, 'provider_id');
	is(signer_action($d, $ord_sr, 'signer2@example.org', 'sign'), 409, 'the double refuses the second signer first');
	is(signer_action($d, $ord_sr, 'signer1@example.org', 'sign'), 200, 'signer 1 signs');
	ok(wait_until($node, "SELECT string_agg(status::text, ',' ORDER BY sequence) FROM qes_sign.signers "
		  . "WHERE request_id = '$ord'", 'signed,open'), 'signer 2 open after signer 1 signed');
	is(req($ord, 'status'), 'in_signatur', 'ordered request in_signatur');
	is(signer_action($d, $ord_sr, 'signer2@example.org', 'sign'), 200, 'signer 2 signs');
	ok(wait_until($node, "SELECT status FROM qes_sign.signatur_anfragen WHERE id = '$ord'", 'vollstaendig'),
		'ordered request vollstaendig');
};

scenario 'a signer declines' => sub {
	my ($dec) = create_requests($node, 1);
	submitted_ok($node, [$dec], undef, 'request to decline submitted');
	is(signer_action($d, req($dec, 'provider_id'), 'signer2@example.org', 'decline',
			{ message => 'Falsche Miethöhe' }), 200, 'signer 2 declines');
	ok(wait_until($node, "SELECT status || ' ' || (cancel_reason LIKE 'declined%') FROM qes_sign.signatur_anfragen "
		  . "WHERE id = '$dec'", 'abgebrochen true'), 'declined: abgebrochen, reason declined...');
	is(signer_status($dec, 'signer2@example.org'), 'declined', 'signer 2 declined');
	ok(has_event($dec, 'signer_declined'), 'audit: signer_declined');
};

scenario 'withdraw' => sub {
	my ($wd) = create_requests($node, 1);
	submitted_ok($node, [$wd], undef, 'request to withdraw submitted');
	one("SELECT qes_sign.withdraw('$wd', 'Wohnung anderweitig vermietet')");
	ok(wait_until($node, "SELECT status || ' / ' || cancel_reason FROM qes_sign.signatur_anfragen WHERE id = '$wd'",
			'abgebrochen / withdrawn: Wohnung anderweitig vermietet'), 'withdrawn: abgebrochen with the reason');
	is(sr_at_double($wd)->{status_overall}, 'WITHDRAWN', 'withdrawn at Skribble');
};

scenario 'expiry' => sub {
	my ($exp) = create_requests($node, 1, expires_in => '2 seconds');
	ok(wait_until($node, "SELECT status || ' / ' || cancel_reason FROM qes_sign.signatur_anfragen WHERE id = '$exp'",
			'abgebrochen / expired', 30), 'expired: abgebrochen, reason expired');
	if (req($exp, 'provider_id') ne '')
	{
		is(sr_at_double($exp)->{status_overall}, 'WITHDRAWN', 'the expired request is withdrawn at Skribble');
	}
};

scenario 'replace a signer' => sub {
	my ($rep) = create_requests($node, 1);
	submitted_ok($node, [$rep], undef, 'request with a wrong signer submitted');
	one("SELECT qes_sign.replace_signer('$rep', 'signer2\@example.org', "
		  . "'{\"first_name\": \"Berta\", \"last_name\": \"Neu\", \"email\": \"berta.neu\@example.org\"}')");
	ok(wait_until($node, "SELECT state FROM qes_sign.work_items WHERE request_id = '$rep' AND kind = 'replace_signer'",
			'done'), 'replace_signer work item done');
	my @emails = sort map { $_->{signer_identity_data}{email_address} } @{ sr_at_double($rep)->{signatures} };
	is_deeply(\@emails, [ 'berta.neu@example.org', 'signer1@example.org' ],
		'at Skribble: the old signer removed, the new one added');
	is(signer_action($d, req($rep, 'provider_id'), 'signer1@example.org', 'sign'),   200, 'signer 1 signs');
	is(signer_action($d, req($rep, 'provider_id'), 'berta.neu@example.org', 'sign'), 200, 'the new signer signs');
	ok(wait_until($node, "SELECT status FROM qes_sign.signatur_anfragen WHERE id = '$rep'", 'vollstaendig'),
		'request with the replaced signer vollstaendig');
	is(one("SELECT string_agg(email || '=' || status, ',' ORDER BY id) FROM qes_sign.signers WHERE request_id = '$rep'"),
		'signer1@example.org=signed,signer2@example.org=replaced,berta.neu@example.org=signed',
		'signer statuses after the replacement');
};

scenario 'reminder, then 429 within the hour' => sub {
	my ($rem) = create_requests($node, 1);
	submitted_ok($node, [$rem], undef, 'request to remind submitted');
	one("SELECT qes_sign.remind('$rem')");
	ok(wait_until($node, "SELECT state FROM qes_sign.work_items WHERE request_id = '$rem' AND kind = 'remind'", 'done'),
		'first reminder sent');
	ok(has_event($rem, 'reminded'), 'audit: reminded');
	is(sr_at_double($rem)->{_double}{reminders}, 1, 'Skribble counted one reminder');
	one("SELECT qes_sign.remind('$rem')");
	ok(wait_until($node, "SELECT string_agg(state, ',' ORDER BY id) FROM qes_sign.work_items "
		  . "WHERE request_id = '$rem' AND kind = 'remind'", 'done,failed'), 'second reminder within the hour: failed');
	is(one("SELECT count(*) FROM qes_sign.timeline('$rem') WHERE event = 'remind_failed' "
		  . "AND detail->>'reason' = 'reminder limit reached'"), '1', "audit: remind_failed, 'reminder limit reached'");
	is(sr_at_double($rem)->{_double}{reminders}, 1, 'still one reminder at Skribble');
	isnt(one("SELECT last_error FROM qes_sign.work_items WHERE request_id = '$rem' AND state = 'failed'"), '',
		'the failed reminder keeps its error');
};

scenario 'a create Skribble refuses (406) is final' => sub {
	my ($enc) = create_requests($node, 1, document => test_pdf('/Encrypt 5 0 R '));
	ok(wait_until($node, "SELECT status FROM qes_sign.signatur_anfragen WHERE id = '$enc'", 'abgebrochen'),
		'refused create (406): abgebrochen');
	like(req($enc, 'cancel_reason'), qr/corrupt or encrypted/, "cancel_reason carries Skribble's message");
	is(one("SELECT count(*) FROM qes_sign.work_items WHERE request_id = '$enc' AND state = 'pending'"), '0',
		'nothing left pending for the refused request');
};

scenario 'the relay: 200 with the receipt for a signed callback URL, 403 for a forged one' => sub {
	my ($id) = create_requests($node, 1);
	my $url = decode_json(one("SELECT qes_sign.callback_urls('$id')"))->{callback_update_url};
	$url =~ s{^https?://[^/]+}{};
	$url =~ s/SKRIBBLE_[A-Z_]+/x/g;
	my $relay = "http://127.0.0.1:$node->{relay}{port}";
	my $http = HTTP::Tiny->new;
	my $res = $http->post("$relay$url", { content => '{"type": "UPDATE"}' });
	is($res->{status}, 200, 'signed URL: 200');
	is_deeply(decode_json($res->{content}), { request_id => $id, callback_type => 'update', duplicate => JSON::PP::false },
		'the receipt');
	(my $forged = $url) =~ s{/update/[^/?]+}{/update/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA};
	is($http->post("$relay$forged", { content => '{}' })->{status}, 403, 'forged URL: 403');
	is(one("SELECT count(*) FROM qes_sign.callback_inbox WHERE request_id = '$id'"), '1', 'only the signed one recorded');
	one("SELECT qes_sign.withdraw('$id', 'test')");
};

scenario 'operator metrics' => sub {
	my $ops = ops($node);
	cmp_ok($ops->{api_calls} // 0, '>', 10, 'operations: api_calls counted');
	is($ops->{logins}, double_stats($d)->{logins}, 'operations: logins match the double');
	is($ops->{logins}, 1, 'one login for the whole run (token valid 20 min)');
	is($ops->{calls_in_flight}, 0, 'operations: nothing in flight at rest');
	is($ops->{queue_submit} // 0, 0, 'operations: submit queue empty');
	creates_once_ok($d, [ map { $_->[0] } query_list($node,
		'SELECT id FROM qes_sign.signatur_anfragen WHERE provider_id IS NOT NULL') ]);
	is(one('SELECT ok FROM qes_sign.verify_audit_chain()'), 't', 'audit chain intact');
};

$node->stop;
done_testing();
