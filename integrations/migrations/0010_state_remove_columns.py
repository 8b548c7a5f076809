"""Runtime state and tokens left EmailIntegration (mailworker 0005 and 0009 copied them)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("integrations", "0009_state_oauth_grant"),
        ("mailworker", "0005_state_mailbox_state"),
    ]

    operations = [
        migrations.RemoveField(
            model_name='emailintegration',
            name='consecutive_failures',
        ),
        migrations.RemoveField(
            model_name='emailintegration',
            name='failure_alert_sent_at',
        ),
        migrations.RemoveField(
            model_name='emailintegration',
            name='idle_status',
        ),
        migrations.RemoveField(
            model_name='emailintegration',
            name='idle_status_at',
        ),
        migrations.RemoveField(
            model_name='emailintegration',
            name='last_error',
        ),
        migrations.RemoveField(
            model_name='emailintegration',
            name='last_error_at',
        ),
        migrations.RemoveField(
            model_name='emailintegration',
            name='last_polled_at',
        ),
        migrations.RemoveField(
            model_name='emailintegration',
            name='last_success_at',
        ),
        migrations.RemoveField(
            model_name='emailintegration',
            name='needs_reconnect_notified_at',
        ),
        migrations.RemoveField(
            model_name='emailintegration',
            name='needs_reconnect_reason',
        ),
        migrations.RemoveField(
            model_name='emailintegration',
            name='needs_reconnect_since',
        ),
        migrations.RemoveField(
            model_name='emailintegration',
            name='oauth_access_token',
        ),
        migrations.RemoveField(
            model_name='emailintegration',
            name='oauth_access_token_expires_at',
        ),
        migrations.RemoveField(
            model_name='emailintegration',
            name='oauth_account',
        ),
        migrations.RemoveField(
            model_name='emailintegration',
            name='oauth_refresh_token',
        ),
        migrations.RemoveField(
            model_name='emailintegration',
            name='poll_failures',
        ),
        migrations.RemoveField(
            model_name='emailintegration',
            name='subject_regex_timed_out_at',
        ),
    ]
