# Without callbacks (relay stopped) reconciliation still completes requests;
# tokens that expire mid-run are renewed by a new login; a connection dropped
# after Skribble accepted a create does not create the request twice.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use QesTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $d = start_double();
my $node = qes_node('reconcile', double => $d, conf => { 'qes_sign.reconcile_interval' => "'1s'" });


scenario 'relay down: reconciliation completes the requests' => sub {
	stop_child($node->{relay});
	my @ids = create_requests($node, 5);
	submitted_ok($node, \@ids);
	is(sign_all($d, $node, \@ids), 0, 'all signers signed at the double');
	all_status_ok($node, \@ids, 'vollstaendig', 30, 'relay down: all 5 requests vollstaendig through reconciliation');
	cmp_ok(double_stats($d)->{callbacks}{failed}, '>', 0, "the double's callbacks failed (nobody listens)");
	is($node->safe_psql('postgres', 'SELECT count(*) FROM qes_sign.callback_inbox'), '0',
		'no callback reached the database');
	is($node->safe_psql('postgres', "SELECT count(*) FROM qes_sign.signers WHERE request_id IN ("
		  . join(', ', map { "'$_'" } @ids) . ") AND status <> 'signed'"), '0', 'every signer signed');
	creates_once_ok($d, \@ids, 'reconciled requests created once');
};

scenario 'tokens expire mid-run' => sub {
	my $logins_before = double_stats($d)->{logins};
	ctl_post($d, 'token-ttl', { seconds => 2 });
	ctl_post($d, 'expire-tokens');
	my @tok = create_requests($node, 20);
	submitted_ok($node, \@tok, 60, 'submitted after the token was expired');
	sleep 3;    # the renewed token (2 s) expires too
	is(sign_all($d, $node, \@tok), 0, 'all signers signed');
	all_status_ok($node, \@tok, 'vollstaendig', 60, 'all 20 vollstaendig across expiring tokens');
	my $ops = ops($node);
	cmp_ok($ops->{logins}, '>', 1, "operations: logged in again ($ops->{logins} logins)");
	cmp_ok(double_stats($d)->{logins}, '>', $logins_before, 'the double saw new logins');
	cmp_ok(double_stats($d)->{login_failures}, '==', 0, 'no failed login');
	creates_once_ok($d, \@tok, 'created once despite expired tokens');
	ctl_post($d, 'token-ttl', { seconds => 1200 });
};

scenario 'connection dropped after an accepted create' => sub {
	ctl_post($d, 'faults', { drop_after_create_count => 3 });
	my @drop = create_requests($node, 3);
	submitted_ok($node, \@drop, 60, 'submitted although the answers to the creates were lost');
	is(double_stats($d)->{faults_injected}{drop_after_create}, 3, 'three create answers were dropped');
	for my $id (@drop)
	{
		is(scalar @{ ctl_get($d, "requests?custom=$id") }, 1, "exactly one request at Skribble for $id");
		is($node->safe_psql('postgres', "SELECT provider_id FROM qes_sign.signatur_anfragen WHERE id = '$id'"),
			ctl_get($d, "requests?custom=$id")->[0]{id}, 'the request points at that one');
	}
	ctl_post($d, 'faults', {});
	is(sign_all($d, $node, \@drop), 0, 'all signers signed');
	all_status_ok($node, \@drop, 'vollstaendig', 30, 'requests with lost create answers vollstaendig');
	creates_once_ok($d, [ map { $_->[0] } query_list($node, 'SELECT id FROM qes_sign.signatur_anfragen') ],
		'no request created twice in this run');
};

$node->stop;
done_testing();
