# Built concurrently: a live subscription table keeps taking writes while the fan-out's index is made.

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('promotions', '0005_fan_out_cursor'),
    ]

    operations = [
        AddIndexConcurrently(
            model_name='subscription',
            index=models.Index(fields=['product', 'id'], name='subscription_product_walk'),
        ),
    ]
